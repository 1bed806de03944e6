"""The Helm chart: lint, render, validate, refuse bad values, least privilege, and a full lifecycle.

The lifecycle runs on a throwaway control plane, so that Helm can own the CRD there without
touching the session cluster's.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import Cluster, Kubectl, OperatorProcess, RedisHandle
from localcluster import LocalCluster, wait_for
from localcluster.binaries import Binaries

ROOT = Path(__file__).resolve().parents[2]
CHART = ROOT / "charts" / "newfuse-operator"
SAMPLE = ROOT / "crds" / "samples" / "summarizer.yaml"
KUBE_VERSION = "1.35.4"


@pytest.fixture(scope="module")
def binaries() -> Binaries:
    return Binaries.ensure()


def helm(
    binaries: Binaries, *args: str, kubeconfig: Path | None = None, check: bool = True
) -> subprocess.CompletedProcess[str]:
    argv = [str(binaries.helm), *args]
    if kubeconfig is not None:
        argv += ["--kubeconfig", str(kubeconfig)]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=180, check=False)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def render(binaries: Binaries, *sets: str) -> list[dict[str, Any]]:
    out = helm(
        binaries,
        "template",
        "nf",
        str(CHART),
        "-n",
        "newfuse-system",
        "--kube-version",
        KUBE_VERSION,
        *sets,
    ).stdout
    return [doc for doc in yaml.safe_load_all(out) if doc]


def test_lint_passes(binaries: Binaries) -> None:
    result = helm(binaries, "lint", str(CHART))
    assert "0 chart(s) failed" in result.stdout


@pytest.mark.parametrize(
    "mode",
    [[], ["--set", "rbac.namespaced=true", "--set", "watchNamespaces={team-a,team-b}"]],
    ids=["cluster-wide", "namespaced"],
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
    }
    assert expected <= set(kinds)
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
    if mode:
        assert [d["metadata"]["namespace"] for d in docs if d["kind"] == "Role"] == [
            "team-a",
            "team-b",
        ]
        [crds_only] = [d for d in docs if d["kind"] == "ClusterRole"]
        assert [r["resources"] for r in crds_only["rules"]] == [["customresourcedefinitions"]]
        assert crds_only["rules"][0]["verbs"] == ["get", "list", "watch"]


@pytest.mark.parametrize(
    ("values", "message"),
    [
        ("replicaCount: two\n", "replicaCount"),
        ("surprise: 1\n", "surprise"),
        ("redis:\n  url: http://not-redis\n", "redis/url"),
        ("operator:\n  logFormat: xml\n", "logFormat"),
    ],
    ids=["wrong type", "unknown key", "bad redis url", "bad enum"],
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


def test_rbac_is_least_privilege_without_wildcards(binaries: Binaries) -> None:
    [role] = [d for d in render(binaries) if d["kind"] == "ClusterRole"]
    for rule in role["rules"]:
        for field in ("apiGroups", "resources", "verbs"):
            assert "*" not in rule[field], f"wildcard in {field}: {rule}"
        assert not {"escalate", "bind", "impersonate"} & set(rule["verbs"]), rule
    resources = {r for rule in role["rules"] for r in rule["resources"]}
    assert resources == {
        "newfuseagents",
        "newfuseagents/status",
        "pods",
        "events",
        "controllerrevisions",
        "customresourcedefinitions",
    }


@pytest.fixture(scope="module")
def helm_cluster(
    tmp_path_factory: pytest.TempPathFactory, binaries: Binaries
) -> Iterator[LocalCluster]:
    """A throwaway control plane for the install/upgrade/uninstall lifecycle."""
    local = LocalCluster(
        tmp_path_factory.mktemp("helm") / "cluster", node_count=2, log=lambda _: None
    )
    local.up(binaries)
    yield local
    local.down()


def _token_kubeconfig(kubectl: Kubectl, namespace: str, account: str, target: Path) -> Path:
    """A kubeconfig that authenticates as the chart's ServiceAccount (like its pod would)."""
    token = kubectl("create", "token", account, "-n", namespace, "--duration=1h").strip()
    config = yaml.safe_load(kubectl.kubeconfig.read_text())
    config["users"] = [{"name": "operator", "user": {"token": token}}]
    config["contexts"][0]["context"]["user"] = "operator"
    target.write_text(yaml.safe_dump(config))
    return target


def test_install_run_as_configured_upgrade_and_uninstall(
    binaries: Binaries, helm_cluster: LocalCluster, redis_server: RedisHandle, tmp_path: Path
) -> None:
    kubeconfig = helm_cluster.kubeconfig
    k = Kubectl(str(binaries.kubectl), kubeconfig)
    restricted = "pod-security.kubernetes.io/enforce=restricted"
    for namespace in ("newfuse-system", "agents"):
        k("create", "namespace", namespace)
        k("label", "namespace", namespace, restricted)
    helm(
        binaries,
        "install",
        "nf",
        str(CHART),
        "-n",
        "newfuse-system",
        "--set",
        f"redis.url={redis_server.url}",
        "--wait",
        "--timeout",
        "90s",
        kubeconfig=kubeconfig,
    )
    deployment = json.loads(
        k("get", "deployment", "nf-newfuse-operator", "-n", "newfuse-system", "-o", "json")
    )
    assert deployment["status"]["readyReplicas"] == 2, (
        "the operator pods pass the restricted policy"
    )

    # The operator as the chart configures it: its env, and its ServiceAccount's credentials.
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    env = {e["name"]: e["value"] for e in container["env"] if "value" in e}
    for local_only in (
        "NEWFUSE_METRICS_ADDRESS",
        "NEWFUSE_METRICS_PORT",
        "NEWFUSE_HEALTH_ENDPOINT",
    ):
        env.pop(local_only)
    account = deployment["spec"]["template"]["spec"]["serviceAccountName"]
    as_operator = _token_kubeconfig(k, "newfuse-system", account, tmp_path / "operator.kubeconfig")
    operator = OperatorProcess(
        as_operator, env.pop("NEWFUSE_REDIS_URL"), tmp_path / "operator.log", **env
    )
    operator.start()
    try:
        k("apply", "-n", "agents", "-f", str(SAMPLE))

        def available() -> bool:
            status = (
                json.loads(k("get", "nfa", "summarizer", "-n", "agents", "-o", "json")).get(
                    "status"
                )
                or {}
            )
            return bool(status.get("phase") == "Available" and status.get("readyReplicas") == 3)

        wait_for(available, 90, what="the sample fleet Available under the chart's RBAC")
        k("delete", "nfa", "summarizer", "-n", "agents", "--wait=true", "--timeout=60s")
    finally:
        operator.kill()
    log = (tmp_path / "operator.log").read_text()
    assert "Forbidden" not in log, "the chart's RBAC covers everything the operator does"
    assert " 403" not in log

    # A chart whose CRD changed: `helm upgrade` must upgrade the CRD too.
    changed = tmp_path / "chart"
    shutil.copytree(CHART, changed)
    crd_file = changed / "files" / "newfuse.io_newfuseagents.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    crd["spec"]["versions"][0]["additionalPrinterColumns"].append(
        {"name": "Upgraded", "type": "string", "jsonPath": ".status.message"}
    )
    crd_file.write_text(yaml.safe_dump(crd))
    helm(
        binaries,
        "upgrade",
        "nf",
        str(changed),
        "-n",
        "newfuse-system",
        "--set",
        f"redis.url={redis_server.url}",
        kubeconfig=kubeconfig,
    )
    live = json.loads(k("get", "crd", "newfuseagents.newfuse.io", "-o", "json"))
    assert "Upgraded" in [
        c["name"] for c in live["spec"]["versions"][0]["additionalPrinterColumns"]
    ]

    helm(binaries, "uninstall", "nf", "-n", "newfuse-system", "--wait", kubeconfig=kubeconfig)
    assert k("get", "crd", "newfuseagents.newfuse.io", "-o", "name").strip() == (
        "customresourcedefinition.apiextensions.k8s.io/newfuseagents.newfuse.io"
    ), "crds.keep leaves the CRD"
    leftovers = k(
        "get",
        "deployment,serviceaccount,service,pdb",
        "-n",
        "newfuse-system",
        "-l",
        "app.kubernetes.io/instance=nf",
        "-o",
        "name",
    )
    assert leftovers.strip() == ""
    assert (
        k("get", "clusterrole", "-l", "app.kubernetes.io/instance=nf", "-o", "name").strip() == ""
    )
