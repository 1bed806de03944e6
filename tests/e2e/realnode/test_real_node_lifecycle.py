"""Stopping the real node leaves the machine clean, and it starts again (last: it stops the node).

What a kubelet leaves behind outlives its process: containers under their shims, the root dir
bind-mounted onto itself, pod volumes, network namespaces, the bridge, cgroups, fixed host paths.
Each is checked here from the machine itself, not only through `RealNode.leftovers()`.
"""

from __future__ import annotations

import time
from pathlib import Path

from harness import Cluster, Fleets, OperatorProcess, on_real_node
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


def test_stopping_the_real_node_leaves_nothing_behind_and_it_comes_back(
    real_images: images.ImageSet,
    real_node: RealNodeInfo,
    real_namespace: str,
    fleets: Fleets,
    operator: OperatorProcess,
    cluster: Cluster,
) -> None:
    assert cluster.local is not None
    # A running container first, so that there are mounts, a netns and cgroups to clean.
    fleets.create("tidy", replicas=1, **on_real_node(real_images.agent))
    fleets.wait_available("tidy", 1, timeout=120)
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
    # containerd's store went with the cleanup: the image comes back by import, and the
    # kubelet restarts the fleet's pod that is still bound to the node.
    images.import_images([real_images.agent, real_images.pause], info.containerd_socket, print)
    wait_for(lambda: fleets.available("tidy", 1), 180, what="the fleet Available again")
