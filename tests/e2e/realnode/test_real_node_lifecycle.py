"""Stopping the real node leaves the machine clean, and it starts again (last: it stops the node).

What a kubelet leaves behind outlives its process: containers under their shims, the root dir
bind-mounted onto itself, pod volumes, network namespaces, the bridge, cgroups, fixed host paths.
Each is checked here from the machine itself, not only through `RealNode.leftovers()`.

The container is the pause image's, not an agent's: what is checked is the node's clean-up, and
the pause image is back in containerd at once after a restart, where an agent image takes 20 s
to import again (the agents on the real node have tests of their own).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kubernetes import client as k8s_client

from harness import Cluster, on_real_node
from localcluster import images, nodeclean, wait_for
from localcluster.nodeconfig import BRIDGE
from localcluster.realnode import RealNodeInfo


def _our_processes(node_root: Path) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            argv = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if str(node_root) in argv:
            found.append(f"{proc.name}: {argv[:120]}")
    return found


def _running_pod(core: k8s_client.CoreV1Api, namespace: str, image: str) -> str:
    """A pause container on the real node, under the restricted security context; its pod's UID."""
    restricted = {
        "runAsNonRoot": True,
        "runAsUser": 65532,
        "allowPrivilegeEscalation": False,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    container = {"name": "pause", "image": image, "imagePullPolicy": "Never"}
    spec = {**on_real_node(image), "containers": [{**container, "securityContext": restricted}]}
    for key in ("image", "imagePullPolicy"):
        spec.pop(key)
    pod: Any = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "tidy"}, "spec": spec}
    core.create_namespaced_pod(namespace, pod)

    def running() -> bool:
        statuses = core.read_namespaced_pod("tidy", namespace).status.container_statuses or []
        return bool(statuses) and statuses[0].state.running is not None

    wait_for(running, 60, what="the pause container running")
    return str(core.read_namespaced_pod("tidy", namespace).metadata.uid)


def test_stopping_the_real_node_leaves_nothing_behind_and_it_comes_back(
    real_node: RealNodeInfo,
    real_namespace: str,
    k8s_api: k8s_client.ApiClient,
    cluster: Cluster,
) -> None:
    assert cluster.local is not None
    core = k8s_client.CoreV1Api(k8s_api)
    # A running container first, so that there are mounts, a netns and cgroups to clean.
    _running_pod(core, real_namespace, images.pause_image_ref())
    node = cluster.local.real_node()
    assert nodeclean.cgroup_pids(), "the agent container runs in the kubelet's cgroups"
    assert node.leftovers()

    assert node.down() == ["kubelet", "containerd"]
    assert node.leftovers() == []
    assert _our_processes(node.paths.root) == [], "no kubelet, containerd or shim"
    assert not nodeclean.cgroup_pids(), "no container process"
    assert not Path(f"/sys/class/net/{BRIDGE}").exists()
    assert not any((Path(h) / "kubepods").exists() for h in Path("/sys/fs/cgroup").iterdir())
    mounts = Path("/proc/self/mountinfo").read_text()
    for prefix in (str(node.paths.root), "/var/lib/kubelet", "/run/containerd", "/run/netns/cni"):
        assert f" {prefix}" not in mounts, prefix
    for fixed in nodeclean.FIXED_PATHS:
        assert not fixed.exists(), fixed

    started = time.monotonic()
    info = cluster.local.real_node_up()
    assert info is not None
    restart_seconds = time.monotonic() - started
    print(f"real node restarted in {restart_seconds:.1f}s")
    assert restart_seconds < 60

    # containerd's store went with the cleanup; the node imports the pause image as it starts,
    # and the kubelet restarts the pod that is still bound to the node.
    def restarted() -> bool:
        pod = core.read_namespaced_pod("tidy", real_namespace)
        statuses = pod.status.container_statuses or []
        return bool(statuses and statuses[0].state.running is not None and pod.status.pod_ip)

    wait_for(restarted, 90, what="the pod's container running again on the restarted node")
