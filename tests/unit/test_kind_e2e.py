"""`kind.sh e2e`, run against stand-in commands (tests/kind_path.py), without Docker.

The fleet it applies is a valid NewFuseAgent on the agent image it loaded; the condition it waits
for is one the operator sets; it copies the Redis URL and the signing key where the agents read
them, following the chart's signing settings; it submits signed tasks through a port-forward to
the trial Redis, which it stops again; secrets never reach a command line.
"""

from __future__ import annotations

import base64
from pathlib import Path
from typing import Any

import pytest
import yaml

from kind_path import (
    PASSWORD,
    PF_PORT,
    REDIS_URL,
    SIGNING_KEY,
    Run,
    built_refs,
    helm_values,
    option,
    run_kind_sh,
)
from newfuse.api.v1alpha1 import SINGULAR, ConditionType, NewFuseAgent


@pytest.fixture(scope="module")
def e2e_run(tmp_path_factory: pytest.TempPathFactory) -> Run:
    return run_kind_sh(tmp_path_factory.mktemp("e2e"), "e2e")


def applied(run: Run, kind: str) -> list[tuple[list[str], dict[str, Any]]]:
    """The arguments and body of every `kubectl apply -f -` of a ``kind`` object."""
    out = []
    for c in run.calls:
        if f"kind: {kind}" in c.get("stdin", ""):
            out.append((c["args"], yaml.safe_load(c["stdin"])))
    return out


def e2e_secrets(run: Run) -> dict[str, dict[str, str]]:
    """The Secrets applied in the e2e namespace: name -> decoded data."""
    [(fleet_args, _)] = applied(run, "NewFuseAgent")
    namespace = option(fleet_args, "-n")
    return {
        body["metadata"]["name"]: {k: base64.b64decode(v).decode() for k, v in body["data"].items()}
        for args, body in applied(run, "Secret")
        if option(args, "-n") == namespace
    }


def test_e2e_runs_the_sample_fleet_on_the_loaded_agent_image(e2e_run: Run) -> None:
    assert e2e_run.result.returncode == 0, e2e_run.result.stderr
    refs = built_refs(e2e_run)
    [(args, body)] = applied(e2e_run, "NewFuseAgent")
    fleet = NewFuseAgent.model_validate(body)  # what the API server gets is a valid fleet
    assert fleet.spec.image == refs["agent"]
    assert body["spec"]["imagePullPolicy"] == "Never"
    namespace = option(args, "-n")
    [label] = e2e_run.of("kubectl", "label", "namespace", namespace)
    assert "pod-security.kubernetes.io/enforce=restricted" in label
    assert e2e_run.index("kubectl", "label") < e2e_run.index("kubectl", "apply", namespace)
    [wait] = e2e_run.of("kubectl", "wait")
    assert option(wait, "--for") == f"condition={ConditionType.AVAILABLE.value}"
    assert f"{SINGULAR}/{fleet.metadata.name}" in wait
    assert option(wait, "-n") == namespace


def test_e2e_copies_the_redis_url_and_signing_key_where_the_agents_read_them(
    e2e_run: Run,
) -> None:
    # The operator's env (the stand-in says what the chart renders; the chart test above checks
    # the chart) names these Secrets in fleet namespaces: NEWFUSE_AGENT_REDIS_SECRET (from
    # redis.agentSecret, as the script sets it) and NEWFUSE_AGENT_SIGNING_SECRET.
    values = helm_values(e2e_run.of("helm", "upgrade")[0])
    assert e2e_secrets(e2e_run) == {
        values["redis.agentSecret.name"]: {values["redis.agentSecret.key"]: REDIS_URL},
        "newfuse-newfuse-operator-signing": {"key": SIGNING_KEY},
    }
    [(_, body)] = applied(e2e_run, "NewFuseAgent")
    assert "signing" not in body["spec"], "the chart's default key is the fleet's"
    for call in e2e_run.calls:
        assert not any(PASSWORD in a or SIGNING_KEY in a for a in call["args"]), call["args"]


def test_e2e_submits_signed_tasks_through_the_forwarded_trial_redis(e2e_run: Run) -> None:
    assert e2e_run.result.returncode == 0, e2e_run.result.stderr
    [forward] = e2e_run.of("kubectl", "port-forward")
    assert "service/newfuse-newfuse-operator-redis" in forward
    assert ":6379" in forward
    assert option(forward, "-n") == "newfuse-system"
    [(args, body)] = applied(e2e_run, "NewFuseAgent")
    fleet = body["metadata"]["name"]
    submits = e2e_run.of("newfuse", "task", "submit", fleet, "--wait")
    assert len(submits) == 2
    assert any("--count" in s for s in submits)
    clis = [c for c in e2e_run.calls if c["tool"] == "newfuse"]
    assert len(clis) == 3
    for cli in clis:
        assert fleet in cli["args"]
        assert option(cli["args"], "--namespace") == option(args, "-n")
        assert cli["env"] == {
            "NEWFUSE_REDIS_URL": f"redis://:{PASSWORD}@127.0.0.1:{PF_PORT}/0",
            "NEWFUSE_SIGNING_KEY": SIGNING_KEY,
        }
    assert "e2e passed" in e2e_run.result.stderr
    assert not e2e_run.forwarder_left, "the script left its port-forward running"


@pytest.mark.parametrize(
    ("signing", "fleet_signing", "secrets", "cli_key"),
    [
        # signing.agentsByDefault=false: the fleet names its key's Secret (the chart's NOTES, b.).
        (
            "not-by-default",
            {"keySecretRef": {"name": "newfuse-signing", "key": "key"}},
            {"newfuse-redis-url", "newfuse-signing"},
            SIGNING_KEY,
        ),
        # signing.enabled=false: nothing to sign with.
        ("off", None, {"newfuse-redis-url"}, ""),
    ],
)
def test_e2e_follows_the_charts_signing_settings(
    tmp_path: Path,
    signing: str,
    fleet_signing: dict[str, Any] | None,
    secrets: set[str],
    cli_key: str,
) -> None:
    run = run_kind_sh(tmp_path, "e2e", STUB_SIGNING=signing)
    assert run.result.returncode == 0, run.result.stderr
    [(_, body)] = applied(run, "NewFuseAgent")
    assert NewFuseAgent.model_validate(body)
    assert body["spec"].get("signing") == fleet_signing
    assert set(e2e_secrets(run)) == secrets
    assert [c["env"]["NEWFUSE_SIGNING_KEY"] for c in run.calls if c["tool"] == "newfuse"] == [
        cli_key
    ] * 3


def test_e2e_fails_when_a_task_fails(tmp_path: Path) -> None:
    run = run_kind_sh(tmp_path, "e2e", STUB_FAILED="1")
    assert run.result.returncode != 0
    assert "expected '5 succeeded, 0 failed'" in run.result.stderr
    assert not run.forwarder_left, "a failed run must stop its port-forward too"
