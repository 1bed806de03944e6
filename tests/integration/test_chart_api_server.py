"""The Helm chart and the kustomize base, as the API server sees them.

The chart lints, and renders (cluster-wide, namespaced, and with every optional object) objects
the API server accepts in a server-side dry run, except the Prometheus Operator kinds, which the
session cluster has no CRDs for (tests/unit/test_chart_rules.py checks their content, and
test_chart_lifecycle.py applies them on stand-in CRDs). The kustomize base in config/ must be what
hack/gen_kustomize.py generates, and must pass a server-side dry run too.
"""

from __future__ import annotations

import pytest
import yaml

import gen_kustomize
from harness import Cluster, Kubectl
from helm_chart import (
    CHART,
    EVERYTHING,
    MONITORING_KINDS,
    NAMESPACED,
    ROOT,
    helm,
    operator_cluster_roles,
    render,
)
from localcluster.binaries import Binaries


def test_lint_passes(binaries: Binaries) -> None:
    result = helm(binaries, "lint", str(CHART))
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    "mode",
    [[], NAMESPACED, EVERYTHING],
    ids=["cluster-wide", "namespaced", "everything"],
)
def test_rendered_chart_is_accepted_by_the_api_server(
    binaries: Binaries, kubectl: Kubectl, cluster: Cluster, mode: list[str]
) -> None:
    docs = render(binaries, *mode)
    kinds = sorted({d["kind"] for d in docs})
    expected = {
        "ServiceAccount",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "CustomResourceDefinition",
        "Role",
        "RoleBinding",
    }
    if mode is EVERYTHING:
        expected |= {"NetworkPolicy", "ConfigMap", "Secret"} | MONITORING_KINDS
    assert expected <= set(kinds)
    docs = [d for d in docs if d["kind"] not in MONITORING_KINDS]
    for namespace in ("newfuse-system", "team-a", "team-b"):
        kubectl(
            "apply",
            "-f",
            "-",
            stdin=kubectl("create", "namespace", namespace, "--dry-run=client", "-o", "yaml"),
        )
    out = kubectl(
        "apply",
        "--dry-run=server",
        "-f",
        "-",
        stdin=yaml.safe_dump_all(docs),
    )
    assert out.count("(server dry run)") == len(docs)
    roles = [d for d in docs if d["kind"] == "Role"]
    [lease_role] = [r for r in roles if r["metadata"]["name"].endswith("-leader-election")]
    assert lease_role["metadata"]["namespace"] == "newfuse-system"
    [signing_role] = [r for r in roles if r["metadata"]["name"].endswith("-signing")]
    assert signing_role["metadata"]["namespace"] == "newfuse-system"
    if mode is NAMESPACED:
        own = (lease_role, signing_role)
        assert [r["metadata"]["namespace"] for r in roles if r not in own] == [
            "team-a",
            "team-b",
        ]
        [crds_only] = operator_cluster_roles(docs)
        assert [r["resources"] for r in crds_only["rules"]] == [["customresourcedefinitions"]]
        assert crds_only["rules"][0]["verbs"] == ["get", "list", "watch"]


def test_kustomize_base_is_up_to_date(binaries: Binaries) -> None:
    for relative, text in gen_kustomize.render(binaries.helm).items():
        committed = ROOT / relative
        assert committed.exists(), f"{relative} is missing: run `make manifests`"
        assert committed.read_text() == text, f"{relative} is stale: run `make manifests`"


def test_kustomize_base_builds_and_is_accepted_by_the_api_server(
    kubectl: Kubectl, cluster: Cluster
) -> None:
    built = kubectl("kustomize", str(ROOT / "config" / "default"))
    docs = [doc for doc in yaml.safe_load_all(built) if doc]
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "CustomResourceDefinition", "Deployment", "Role", "ClusterRole"} <= kinds
    assert "Secret" not in kinds, "the base carries no key material"
    for doc in docs:
        cluster_scoped = (
            "Namespace",
            "CustomResourceDefinition",
            "ClusterRole",
            "ClusterRoleBinding",
        )
        if doc["kind"] not in cluster_scoped:
            assert doc["metadata"]["namespace"] == "newfuse-system", doc["metadata"]
        assert doc["metadata"].get("labels", {}).get("app.kubernetes.io/managed-by") != "Helm"
    [deployment] = [d for d in docs if d["kind"] == "Deployment"]
    env = {e["name"]: e for e in deployment["spec"]["template"]["spec"]["containers"][0]["env"]}
    assert env["NEWFUSE_SIGNING_KEY"]["valueFrom"]["secretKeyRef"] == {
        "name": "newfuse-operator-signing",
        "key": "key",
        "optional": True,  # the operator creates it on its first start
    }
    assert env["NEWFUSE_LEADER_ELECTION_NAME"]["value"] == "newfuse-operator"
    kubectl(
        "apply",
        "-f",
        "-",
        stdin=kubectl("create", "namespace", "newfuse-system", "--dry-run=client", "-o", "yaml"),
    )
    out = kubectl("apply", "--dry-run=server", "-f", "-", stdin=built)
    assert out.count("(server dry run)") == len(docs)
