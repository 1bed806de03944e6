"""The Helm chart's full lifecycle: install, run the operator as configured, upgrade, uninstall.

On a throwaway control plane, so that Helm can own the CRD there without touching the session
cluster's. The operator runs with the env and ServiceAccount the chart gives its pod, under the
restricted Pod Security policy; an upgrade changes the CRD and turns on every optional object
(minimal Prometheus Operator CRDs stand in for the real ones); generated secrets survive upgrades;
uninstall leaves the CRD and the operator's signing key.
"""

from __future__ import annotations

import base64
import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from harness import Kubectl, OperatorProcess, RedisHandle
from helm_chart import CHART, EVERYTHING, ROOT, helm
from localcluster import LocalCluster, wait_established, wait_for
from localcluster.binaries import Binaries

SAMPLE = ROOT / "crds" / "samples" / "summarizer.yaml"


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


def _secret_value(k: Kubectl, namespace: str, name: str, key: str) -> str:
    secret = json.loads(k("get", "secret", name, "-n", namespace, "-o", "json"))
    return base64.b64decode(secret["data"][key]).decode()


def _pod_env(k: Kubectl, namespace: str, pod: dict[str, Any]) -> dict[str, str]:
    """The env a container of ``pod`` gets, resolved like the kubelet does (fieldRef, Secrets)."""
    fields = {"metadata.namespace": namespace, "metadata.name": pod["metadata"]["name"]}
    env = {}
    for var in pod["spec"]["containers"][0]["env"]:
        source = var.get("valueFrom")
        if source is None:
            env[var["name"]] = var.get("value", "")  # the API server drops empty values
        elif "fieldRef" in source:
            env[var["name"]] = fields[source["fieldRef"]["fieldPath"]]
        elif "secretKeyRef" in source:
            ref = source["secretKeyRef"]
            found = k(
                "get", "secret", ref["name"], "-n", namespace, "--ignore-not-found", "-o", "name"
            )
            missing = not found.strip()
            if ref.get("optional") and missing:
                continue  # the kubelet leaves an optional variable out
            env[var["name"]] = _secret_value(k, namespace, ref["name"], ref["key"])
        else:
            raise AssertionError(f"unhandled env source: {var}")
    return env


def _monitoring_crd(kind: str, plural: str) -> dict[str, Any]:
    """A minimal stand-in for a Prometheus Operator CRD: the kind exists, any spec is accepted."""
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.monitoring.coreos.com"},
        "spec": {
            "group": "monitoring.coreos.com",
            "names": {"kind": kind, "plural": plural, "singular": kind.lower()},
            "scope": "Namespaced",
            "versions": [
                {
                    "name": "v1",
                    "served": True,
                    "storage": True,
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": True,
                        }
                    },
                }
            ],
        },
    }


def test_install_run_as_configured_upgrade_and_uninstall(
    binaries: Binaries, helm_cluster: LocalCluster, redis_server: RedisHandle, tmp_path: Path
) -> None:
    kubeconfig = helm_cluster.kubeconfig
    k = Kubectl(str(binaries.kubectl), kubeconfig)
    restricted = "pod-security.kubernetes.io/enforce=restricted"
    for namespace in ("newfuse-system", "agents"):
        k("create", "namespace", namespace)
        k("label", "namespace", namespace, restricted)
    installed = helm(
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
    # NOTES tell how fleets use the signing key.
    assert "keySecretRef: {name: nf-newfuse-operator-signing, key: key}" in installed.stdout
    # The chart rendered no key; the operator creates it on its first start (below).
    signing_secret = ("secret", "nf-newfuse-operator-signing", "-n", "newfuse-system")
    assert not k("get", *signing_secret, "--ignore-not-found", "-o", "name").strip()

    # The operator as the chart configures it: one pod's env as the kubelet resolves it (fieldRefs,
    # the signing Secret), and its ServiceAccount's credentials.
    pods = json.loads(
        k(
            "get",
            "pods",
            "-n",
            "newfuse-system",
            "-l",
            "app.kubernetes.io/instance=nf",
            "-o",
            "json",
        )
    )["items"]
    pod = next(p for p in pods if p["metadata"]["name"].startswith("nf-newfuse-operator-"))
    env = _pod_env(k, "newfuse-system", pod)
    assert "NEWFUSE_SIGNING_KEY" not in env, "optional, and not created yet"
    assert env["NEWFUSE_LEADER_ELECTION"] == "true"
    assert env["NEWFUSE_LEADER_ELECTION_NAMESPACE"] == "newfuse-system"
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
        # It created the key's Secret under the chart's RBAC (Forbidden would be in its log).
        wait_for(
            lambda: bool(k("get", *signing_secret, "--ignore-not-found", "-o", "name").strip()),
            30,
            what="the operator to create its signing key",
        )
        signing_key = _secret_value(k, "newfuse-system", "nf-newfuse-operator-signing", "key")
        assert len(signing_key) == 48
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
        # It leads through the Lease the chart names, which its Role lets it take.
        lease = json.loads(
            k("get", "lease", "nf-newfuse-operator", "-n", "newfuse-system", "-o", "json")
        )
        assert pod["metadata"]["name"] in lease["spec"]["holderIdentity"]
        k("delete", "nfa", "summarizer", "-n", "agents", "--wait=true", "--timeout=60s")
    finally:
        operator.kill()
    log = (tmp_path / "operator.log").read_text()
    assert "Forbidden" not in log, "the chart's RBAC covers everything the operator does"
    assert " 403" not in log

    # A chart whose CRD changed: `helm upgrade` must upgrade the CRD too. The upgrade also turns
    # on every optional object, for real on this cluster (minimal Prometheus Operator CRDs
    # stand in for the real ones), and the trial Redis must pass the restricted policy.
    changed = tmp_path / "chart"
    shutil.copytree(CHART, changed)
    crd_file = changed / "files" / "newfuse.io_newfuseagents.yaml"
    crd = yaml.safe_load(crd_file.read_text())
    crd["spec"]["versions"][0]["additionalPrinterColumns"].append(
        {"name": "Upgraded", "type": "string", "jsonPath": ".status.message"}
    )
    crd_file.write_text(yaml.safe_dump(crd))
    monitoring = [
        _monitoring_crd("ServiceMonitor", "servicemonitors"),
        _monitoring_crd("PodMonitor", "podmonitors"),
        _monitoring_crd("PrometheusRule", "prometheusrules"),
    ]
    k("apply", "-f", "-", stdin=yaml.safe_dump_all(monitoring))
    for item in monitoring:
        wait_established(k, item["metadata"]["name"])
    everything = [value.replace("{team-a}", "{agents}") for value in EVERYTHING]
    k("create", "secret", "generic", "redis-ca", "-n", "newfuse-system", "--from-literal=ca.crt=x")
    helm(
        binaries,
        "upgrade",
        "nf",
        str(changed),
        "-n",
        "newfuse-system",
        *everything,
        "--wait",
        "--timeout",
        "90s",
        kubeconfig=kubeconfig,
    )
    live = json.loads(k("get", "crd", "newfuseagents.newfuse.io", "-o", "json"))
    assert "Upgraded" in [
        c["name"] for c in live["spec"]["versions"][0]["additionalPrinterColumns"]
    ]
    redis = json.loads(
        k("get", "deployment", "nf-newfuse-operator-redis", "-n", "newfuse-system", "-o", "json")
    )
    assert redis["status"]["readyReplicas"] == 1, "the trial Redis passes the restricted policy"
    created = k(
        "get",
        "servicemonitor,podmonitor,prometheusrule,networkpolicy,configmap",
        "-A",
        "-l",
        "app.kubernetes.io/instance=nf",
        "-o",
        "name",
    ).split()
    # 3 monitoring objects and 3 policies for the operator, Redis and agents; the gateway's
    # policy and ServiceMonitor; the dashboard.
    assert len(created) == 9, created
    redis_url = _secret_value(k, "newfuse-system", "nf-newfuse-operator-redis-url", "url")

    # Generated secrets survive upgrades: the same signing key and Redis password.
    helm(
        binaries,
        "upgrade",
        "nf",
        str(changed),
        "-n",
        "newfuse-system",
        "--reuse-values",
        "--set",
        "replicaCount=3",
        "--wait",
        "--timeout",
        "90s",
        kubeconfig=kubeconfig,
    )
    assert _secret_value(k, "newfuse-system", "nf-newfuse-operator-signing", "key") == signing_key
    assert _secret_value(k, "newfuse-system", "nf-newfuse-operator-redis-url", "url") == redis_url

    helm(binaries, "uninstall", "nf", "-n", "newfuse-system", "--wait", kubeconfig=kubeconfig)
    assert k("get", "crd", "newfuseagents.newfuse.io", "-o", "name").strip() == (
        "customresourcedefinition.apiextensions.k8s.io/newfuseagents.newfuse.io"
    ), "crds.keep leaves the CRD"
    leftovers = k(
        "get",
        "deployment,serviceaccount,service,pdb,role,rolebinding,networkpolicy,configmap,"
        "servicemonitor,podmonitor,prometheusrule",
        "-A",
        "-l",
        "app.kubernetes.io/instance=nf",
        "-o",
        "name",
    )
    assert leftovers.strip() == ""
    assert (
        k("get", "clusterrole", "-l", "app.kubernetes.io/instance=nf", "-o", "name").strip() == ""
    )
    helm_owned = k(
        "get", "secret", "-n", "newfuse-system", "-l", "app.kubernetes.io/instance=nf", "-o", "name"
    )
    assert helm_owned.split() == [], "the trial Redis' Secrets go"
    # The operator's signing key is not Helm's: it stays, so fleets' copies stay valid.
    assert _secret_value(k, "newfuse-system", "nf-newfuse-operator-signing", "key") == signing_key
