"""The Helm chart refuses bad values: by its schema, or with a clear message where it is unsafe.

Plus the replica count's one consequence beyond the Deployment: a PodDisruptionBudget only with
more than one replica.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from helm_chart import CHART, KUBE_VERSION, helm, render
from localcluster.binaries import Binaries


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("replicaCount: two\n", "replicaCount"),
        ("surprise: 1\n", "surprise"),
        ("redis:\n  url: http://not-redis\n", "redis/url"),
        ("operator:\n  logFormat: xml\n", "logFormat"),
        ("leaderElection:\n  enabled: 'yes'\n", "leaderElection/enabled"),
        ("redis:\n  internal:\n    replicas: 3\n", "replicas"),
        ("redis:\n  internal:\n    persistence:\n      appendfsync: sometimes\n", "appendfsync"),
        ("signing:\n  existingSecretKey: ''\n", "signing/existingSecretKey"),
        ("networkPolicy:\n  apiServer:\n    ports: [0]\n", "networkPolicy/apiServer/ports"),
        ("metrics:\n  prometheusRule:\n    selector: '{job=\"x\"}'\n", "selector"),
    ],
    ids=[
        "wrong type",
        "unknown key",
        "bad redis url",
        "bad enum",
        "election flag not a boolean",
        "unknown internal redis key",
        "bad appendfsync",
        "empty signing key name",
        "port out of range",
        "selector with braces",
    ],
)
def test_bad_values_are_refused_by_the_schema(
    binaries: Binaries, tmp_path: Path, values: str, message: str
) -> None:
    bad = tmp_path / "values.yaml"
    bad.write_text(values)
    result = helm(
        binaries,
        "template",
        "nf",
        str(CHART),
        "--kube-version",
        KUBE_VERSION,
        "-f",
        str(bad),
        check=False,
    )
    assert result.returncode != 0
    assert "values don't meet the specifications of the schema" in result.stderr
    assert message in result.stderr


@pytest.mark.parametrize(
    ("sets", "message"),
    [
        (["redis.url=redis://:secret@redis:6379/0"], "set redis.existingSecret"),
        (["redis.url=rediss://user:secret@redis:6380/0"], "must not contain credentials"),
        (["redis.internal.enabled=true", "redis.existingSecret=mine"], "mutually exclusive"),
        (["leaderElection.renewDeadlineSeconds=20"], "retryPeriodSeconds < renewDeadlineSeconds"),
        (["leaderElection.enabled=false"], "replicaCount > 1 needs leaderElection.enabled"),
        (
            ["metrics.service.enabled=false", "metrics.serviceMonitor.enabled=true"],
            "needs metrics.service.enabled",
        ),
    ],
    ids=[
        "password in url",
        "acl user in url",
        "two redis",
        "unsafe election timings",
        "replicas without election",
        "monitor without service",
    ],
)
def test_unsafe_values_fail_with_a_clear_message(
    binaries: Binaries, sets: list[str], message: str
) -> None:
    argv = ["template", "nf", str(CHART), "--kube-version", KUBE_VERSION]
    for value in sets:
        argv += ["--set", value]
    result = helm(binaries, *argv, check=False)
    assert result.returncode != 0
    assert message in result.stderr


@pytest.mark.parametrize(("replicas", "pdb"), [(1, False), (2, True), (3, True)])
def test_the_pdb_exists_only_with_more_than_one_replica(
    binaries: Binaries, replicas: int, pdb: bool
) -> None:
    """At one replica, minAvailable 1 would forbid every eviction: no node drain could finish."""
    docs = render(binaries, "--set", f"replicaCount={replicas}")
    assert bool([d for d in docs if d["kind"] == "PodDisruptionBudget"]) is pdb
