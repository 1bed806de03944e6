"""`helm install` runs the operator for real: its image, as a pod on the real node.

The API server listens on 127.0.0.1 and there is no kube-proxy, so a pod on the pod network
reaches neither it nor Redis. The chart's test-only `hostNetwork` value puts the operator pod on
the node's network, and `extraEnv` points the in-cluster client at the loopback API server
(choice and reasons in the README's "Real node" section). Everything else is the chart as users
install it: its RBAC, its ServiceAccount token, its Lease, its probes.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlparse

import pytest
import yaml

from harness import Cluster, Fleets, Kubectl, OperatorProcess, RedisHandle
from localcluster import images, wait_for
from localcluster.binaries import REPO_ROOT, Binaries
from localcluster.netutil import free_port
from localcluster.nodeconfig import NODE_LABEL, NODE_LABEL_VALUE, TAINT_KEY
from localcluster.realnode import RealNodeInfo

CHART = REPO_ROOT / "charts" / "newfuse-operator"
RELEASE = "real"
DEPLOYMENT = f"{RELEASE}-newfuse-operator"


@pytest.fixture
def only_the_chart_operator(operator: OperatorProcess) -> Iterator[None]:
    """Stop the session's operator, so only the chart's pod can reconcile; restart it after."""
    operator.kill()
    yield
    operator.start()


def _helm(kubeconfig: str, *args: str) -> str:
    binary = Binaries.ensure().helm
    result = subprocess.run(
        [str(binary), *args, "--kubeconfig", kubeconfig],
        capture_output=True, text=True, timeout=240, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout


def _server(cluster: Cluster) -> str:
    config = yaml.safe_load(cluster.kubeconfig.read_text())
    return str(config["clusters"][0]["cluster"]["server"])


def _operator_pods(kubectl: Kubectl, ns: str) -> list[dict[str, Any]]:
    selector = f"app.kubernetes.io/instance={RELEASE},app.kubernetes.io/name=newfuse-operator"
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
    repository, tag = real_images.operator.rsplit(":", 1)
    api_port = str(urlparse(_server(cluster)).port)
    escaped_label = NODE_LABEL.replace(".", "\\.")  # helm --set splits keys on dots
    values = [
        f"image.repository={repository}", f"image.tag={tag}", "image.pullPolicy=Never",
        # hostNetwork shares the node's ports: one replica, on ports nothing else holds.
        "replicaCount=1", "podDisruptionBudget.enabled=false", "hostNetwork=true",
        f"metrics.port={free_port()}", f"operator.healthPort={free_port()}",
        "extraEnv[0].name=KUBERNETES_SERVICE_HOST", "extraEnv[0].value=127.0.0.1",
        "extraEnv[1].name=KUBERNETES_SERVICE_PORT", f"extraEnv[1].value={api_port}",
        f"redis.url={redis_server.url}", f"watchNamespaces={{{namespace}}}", "crds.install=false",
        f"nodeSelector.{escaped_label}={NODE_LABEL_VALUE}",
        f"tolerations[0].key={TAINT_KEY}", "tolerations[0].operator=Exists",
    ]  # fmt: skip
    kubeconfig = str(cluster.kubeconfig)
    sets = [arg for value in values for arg in ("--set", value)]
    _helm(
        kubeconfig,
        "install",
        RELEASE,
        str(CHART),
        "-n",
        system,
        *sets,
        "--wait",
        "--timeout",
        "180s",
    )

    (pod,) = _operator_pods(kubectl, system)
    assert pod["spec"]["nodeName"] == real_node.name
    (status,) = pod["status"]["containerStatuses"]
    assert status["containerID"].startswith("containerd://")
    assert status["image"].endswith(tag)

    def leading() -> bool:
        lease = json.loads(kubectl("get", "lease", DEPLOYMENT, "-n", system, "-o", "json"))
        return pod["metadata"]["name"] in (lease["spec"].get("holderIdentity") or "")

    wait_for(leading, 60, what="the operator pod holding its Lease")
    fleets.create("charted", replicas=2)
    fleets.wait_available("charted", 2, timeout=120)

    # An upgrade that changes the pod template rolls the operator pod.
    _helm(kubeconfig, "upgrade", RELEASE, str(CHART), "-n", system, *sets,
          "--set", "operator.logLevel=DEBUG", "--wait", "--timeout", "180s")  # fmt: skip

    def rolled() -> dict[str, Any] | None:
        pods = _operator_pods(kubectl, system)
        fresh = [p for p in pods if p["metadata"]["name"] != pod["metadata"]["name"]]
        return fresh[0] if len(pods) == 1 and fresh else None

    new_pod = wait_for(rolled, 120, what="the upgraded operator pod alone")
    fleets.patch_spec("charted", replicas=3)
    fleets.wait_available("charted", 3, timeout=120)
    logs = kubectl("logs", "-n", system, str(new_pod["metadata"]["name"]))
    assert "charted" in logs, "the upgraded pod reconciled the fleet"
    assert "Forbidden" not in logs, "the chart's RBAC covers it all"
    assert " 403" not in logs

    _helm(kubeconfig, "uninstall", RELEASE, "-n", system, "--wait", "--timeout", "120s")
    wait_for(lambda: not _operator_pods(kubectl, system), 60, what="the operator pod gone")
    assert kubectl("get", "deployment", "-n", system, "-o", "name").strip() == ""
