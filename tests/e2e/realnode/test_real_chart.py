"""`helm install` runs the operator and the fleet API gateway for real: pods on the real node.

The API server listens on 127.0.0.1 and there is no kube-proxy, so a pod on the pod network
reaches neither it nor Redis. The chart's test-only `hostNetwork` value puts the operator pod on
the node's network, and `extraEnv` points the in-cluster client at the loopback API server
(choice and reasons in the README's "Real node" section). Everything else is the chart as users
install it: its RBAC, its ServiceAccount token, its Lease, its probes. The gateway pod, from the
same image, verifies a caller's ServiceAccount token with the API server's keys and asks RBAC
through its own ServiceAccount, with nothing but the chart's ClusterRole.
"""

from __future__ import annotations

import functools
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import pytest
import yaml
from kubernetes import config as k8s_config

from fleetapi_auth import service_account
from harness import Cluster, Fleets, Kubectl, OperatorProcess, RedisHandle
from localcluster import images, wait_for
from localcluster.binaries import REPO_ROOT, Binaries
from localcluster.netutil import free_port
from localcluster.nodeconfig import NODE_LABEL, NODE_LABEL_VALUE, TAINT_KEY
from localcluster.realnode import RealNodeInfo

CHART = REPO_ROOT / "charts" / "newfuse-operator"


@pytest.fixture
def only_the_chart_operator(operator: OperatorProcess) -> Iterator[None]:
    """Stop the session's operator, so only the chart's pod can reconcile; restart it after."""
    operator.kill()
    yield
    operator.start()


@functools.cache
def _helm_binary() -> Path:
    # build.sh once per session, not once per helm call (each call re-checks every component).
    return Binaries.ensure().helm


def _helm(kubeconfig: str, *args: str, check: bool = True) -> str:
    binary = _helm_binary()
    result = subprocess.run(
        [str(binary), *args, "--kubeconfig", kubeconfig],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    if check:
        assert result.returncode == 0, result.stderr
    return result.stdout


def _ready_pod(kubectl: Kubectl, ns: str, release: str) -> dict[str, Any] | None:
    """The one operator pod, once its container is Ready (None before, or while two exist)."""
    pods = _operator_pods(kubectl, ns, release)
    statuses = [s for p in pods for s in p["status"].get("containerStatuses") or []]
    return pods[0] if len(pods) == 1 and [s["ready"] for s in statuses] == [True] else None


def _server(cluster: Cluster) -> str:
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    return str(config["clusters"][0]["cluster"]["server"])


GATEWAY_PORT = free_port()


def _gateway_values(node_label: str) -> list[str]:
    """The gateway as the operator runs here: one pod on the real node's network."""
    url = f"http://127.0.0.1:{GATEWAY_PORT}"
    return [
        "gateway.enabled=true", "gateway.replicaCount=1", "gateway.hostNetwork=true",
        f"gateway.port={GATEWAY_PORT}", f"gateway.publicUrl={url}",
        "gateway.extraEnv[0].name=KUBERNETES_SERVICE_HOST", "gateway.extraEnv[0].value=127.0.0.1",
        "gateway.extraEnv[1].name=KUBERNETES_SERVICE_PORT",
        f"gateway.nodeSelector.{node_label}={NODE_LABEL_VALUE}",
        f"gateway.tolerations[0].key={TAINT_KEY}", "gateway.tolerations[0].operator=Exists",
    ]  # fmt: skip


def _check_the_gateway(
    kubectl: Kubectl, cluster: Cluster, real_node: RealNodeInfo, system: str, release: str,
    namespace: str, fleet: dict[str, Any],
) -> None:  # fmt: skip
    """The chart's gateway pod serves the fleet to a ServiceAccount bound to the viewer role."""
    url = f"http://127.0.0.1:{GATEWAY_PORT}"
    assert fleet["status"]["endpoints"] == {"a2a": f"{url}/a2a/{namespace}/charted/"}
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/name=newfuse-gateway"

    def ready() -> dict[str, Any] | None:
        pods = json.loads(kubectl("get", "pods", "-n", system, "-l", selector, "-o", "json"))
        found = [
            p
            for p in pods["items"]
            if all(s["ready"] for s in p["status"].get("containerStatuses") or [{"ready": False}])
        ]
        return found[0] if found else None  # fmt: skip

    pod = wait_for(ready, 180, what="the gateway pod Ready")
    assert pod["spec"]["nodeName"] == real_node.name
    card = httpx.get(f"{url}/a2a/{namespace}/charted/.well-known/agent-card.json", timeout=10)
    assert card.status_code == 200, card.text
    assert card.json()["name"] == "charted"

    api = k8s_config.new_client_from_config(config_file=str(cluster.kubeconfig))  # type: ignore[no-untyped-call]
    token = service_account(api, namespace, "chart-viewer",
                            cluster_role=f"{release}-newfuse-operator-viewer")  # fmt: skip
    call = {"jsonrpc": "2.0", "id": 1, "method": "ListTasks", "params": {}}
    headers = {"Authorization": f"Bearer {token}", "A2A-Version": "1.0"}
    listed = httpx.post(f"{url}/a2a/{namespace}/charted/", json=call, headers=headers, timeout=30)
    assert listed.status_code == 200, listed.text
    assert "result" in listed.json(), listed.json()
    denied = httpx.post(f"{url}/a2a/{namespace}/charted/", json={**call, "method": "SendMessage"},
                        headers=headers, timeout=30)  # fmt: skip
    assert denied.status_code == 403, denied.text
    metrics = httpx.get(f"{url}/metrics", timeout=10).text
    assert 'newfuse_gateway_tokens_verified_total{by="jwks"}' in metrics


def _operator_pods(kubectl: Kubectl, ns: str, release: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/instance={release},app.kubernetes.io/name=newfuse-operator"
    pods = json.loads(kubectl("get", "pods", "-n", ns, "-l", selector, "-o", "json"))["items"]
    return [p for p in pods if not p["metadata"].get("deletionTimestamp")]


def test_helm_installs_upgrades_and_uninstalls_the_operator_as_a_real_pod(
    real_images: images.ImageSet,
    real_node: RealNodeInfo,
    cluster: Cluster,
    namespace: str,
    fleets: Fleets,
    redis_server: RedisHandle,
    kubectl: Kubectl,
    only_the_chart_operator: None,
) -> None:
    system = f"{namespace}-sys"
    kubectl("create", "namespace", system)
    # Cluster-scoped objects (ClusterRoles) carry the release name: one per run, removed after.
    release = f"real-{namespace[-6:]}"
    try:
        _install_upgrade_uninstall(real_images, real_node, cluster, namespace, system, release,
                                   fleets, redis_server, kubectl)  # fmt: skip
    finally:
        # Shown only if the test failed: what the operator pods said.
        for pod in _operator_pods(kubectl, system, release):
            logs = kubectl.run("logs", "-n", system, pod["metadata"]["name"], "--tail=40")
            print(f"--- {pod['metadata']['name']} ---\n{logs.stdout}{logs.stderr}")
        kubeconfig = str(cluster.kubeconfig)
        _helm(kubeconfig, "uninstall", release, "-n", system, "--ignore-not-found", check=False)
        kubectl("delete", "namespace", system, "--wait=false")


def _install_upgrade_uninstall(
    real_images: images.ImageSet, real_node: RealNodeInfo, cluster: Cluster, namespace: str,
    system: str, release: str, fleets: Fleets, redis_server: RedisHandle, kubectl: Kubectl,
) -> None:  # fmt: skip
    repository, tag = real_images.operator.rsplit(":", 1)
    api_port = str(urlparse(_server(cluster)).port)
    escaped_label = NODE_LABEL.replace(".", "\\.")  # helm --set splits keys on dots
    values = [
        f"image.repository={repository}", f"image.tag={tag}", "image.pullPolicy=Never",
        # hostNetwork shares the node's ports: one replica, on ports nothing else holds.
        "replicaCount=1", "podDisruptionBudget.enabled=false", "hostNetwork=true",
        f"metrics.port={free_port()}", f"operator.healthPort={free_port()}",
        "extraEnv[0].name=KUBERNETES_SERVICE_HOST", "extraEnv[0].value=127.0.0.1",
        "extraEnv[1].name=KUBERNETES_SERVICE_PORT",
        f"redis.url={redis_server.url}", f"watchNamespaces={{{namespace}}}", "crds.install=false",
        f"nodeSelector.{escaped_label}={NODE_LABEL_VALUE}",
        f"tolerations[0].key={TAINT_KEY}", "tolerations[0].operator=Exists",
    *_gateway_values(escaped_label),
    ]  # fmt: skip
    kubeconfig = str(cluster.kubeconfig)
    sets = [arg for value in values for arg in ("--set", value)]
    sets += ["--set-string", f"extraEnv[1].value={api_port}"]  # an env value is a string
    sets += ["--set-string", f"gateway.extraEnv[1].value={api_port}"]
    install = ("install", release, str(CHART), "-n", system, *sets, "--wait", "--timeout", "180s")
    _helm(kubeconfig, *install)

    # With maxUnavailable 1 (hostNetwork), helm's --wait accepts zero ready pods: wait here.
    pod = wait_for(lambda: _ready_pod(kubectl, system, release), 120, what="operator pod Ready")
    assert pod["spec"]["nodeName"] == real_node.name
    (status,) = pod["status"]["containerStatuses"]
    assert status["containerID"].startswith("containerd://")
    assert status["image"].endswith(tag)

    def leading() -> bool:
        got = kubectl.run("get", "lease", f"{release}-newfuse-operator", "-n", system, "-o", "json")
        holder = json.loads(got.stdout)["spec"].get("holderIdentity") if got.returncode == 0 else ""
        return pod["metadata"]["name"] in (holder or "")

    wait_for(leading, 60, what="the operator pod holding its Lease")
    fleets.create("charted", replicas=2)
    body = fleets.wait_available("charted", 2, timeout=120)
    _check_the_gateway(kubectl, cluster, real_node, system, release, namespace, body)

    # An upgrade that changes the pod template rolls the operator pod.
    _helm(kubeconfig, "upgrade", release, str(CHART), "-n", system, *sets,
          "--set", "operator.logLevel=DEBUG", "--wait", "--timeout", "180s")  # fmt: skip

    def rolled() -> dict[str, Any] | None:
        fresh = _ready_pod(kubectl, system, release)
        return fresh if fresh and fresh["metadata"]["name"] != pod["metadata"]["name"] else None

    new_pod = wait_for(rolled, 120, what="the upgraded operator pod alone")
    fleets.patch_spec("charted", replicas=3)
    fleets.wait_available("charted", 3, timeout=120)
    logs = kubectl("logs", "-n", system, str(new_pod["metadata"]["name"]))
    assert "charted" in logs, "the upgraded pod reconciled the fleet"
    assert "Forbidden" not in logs, "the chart's RBAC covers it all"
    assert " 403" not in logs

    _helm(kubeconfig, "uninstall", release, "-n", system, "--wait", "--timeout", "120s")
    wait_for(lambda: not _operator_pods(kubectl, system, release), 60, what="the operator pod gone")
    assert kubectl("get", "deployment", "-n", system, "-o", "name").strip() == ""
