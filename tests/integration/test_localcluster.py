"""`make cluster-up` / `cluster-down` semantics: free ports, Ready nodes, and no stray process.

Starts a second, throwaway control plane beside the session's one, which also proves that two
clusters never collide on ports.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from harness import Cluster, RedisHandle
from localcluster import LocalCluster, RedisServer, wait_for
from localcluster.binaries import Binaries


def _processes_mentioning(text: str) -> list[str]:
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == os.getpid():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if text in cmdline:
            found.append(f"{proc.name}: {cmdline}")
    return found


def test_second_cluster_up_lists_ready_nodes_and_down_leaves_nothing(
    tmp_path: Path, cluster: Cluster
) -> None:
    state = tmp_path / "cluster"
    second = LocalCluster(state, node_count=2, log=lambda _: None)
    binaries = Binaries.ensure()
    info = second.up(binaries)
    try:
        assert not info.reused
        assert info.kubeconfig != cluster.kubeconfig
        get_nodes = ["get", "nodes", "-o", "json"]
        out = subprocess.run(
            [str(binaries.kubectl), "--kubeconfig", str(info.kubeconfig), *get_nodes],
            check=True, capture_output=True, text=True, timeout=30,
        ).stdout  # fmt: skip
        nodes = json.loads(out)["items"]
        assert sorted(n["metadata"]["name"] for n in nodes) == ["kwok-node-0", "kwok-node-1"]
        for node in nodes:
            assert {"type": "Ready", "status": "True"}.items() <= next(
                c for c in node["status"]["conditions"] if c["type"] == "Ready"
            ).items()
        assert len(second.pids()) == 5
        assert second.running() is not None, "a healthy cluster is reported as running (reused)"
        assert second.up(binaries).reused
    finally:
        stopped = second.down()
    assert sorted(stopped) == sorted(
        ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]
    )
    assert second.pids() == []
    assert _processes_mentioning(str(state)) == []
    if cluster.local is not None:
        assert cluster.local.running() is not None, "stopping one cluster left the other alone"


def test_redis_restarts_on_the_same_port_and_down_leaves_nothing(
    tmp_path: Path, redis_server: RedisHandle
) -> None:
    server = RedisServer(tmp_path / "redis")
    first = server.up()
    assert first.url != redis_server.url
    pids = server.pids()
    assert server.down()
    assert server.running() is None
    assert all(not Path(f"/proc/{pid}").exists() or pid not in server.pids() for pid in pids)
    second = server.up()
    assert second.port == first.port, "a restart keeps the port, so clients reconnect"
    wait_for(server.running, 10, what="redis answering PING again")
    server.down()
    assert _processes_mentioning(str(tmp_path / "redis")) == []


def test_a_failed_start_leaves_nothing_running(tmp_path: Path) -> None:
    """If a component dies during start-up, the ones already started are stopped too."""
    import dataclasses

    false = Path("/bin/false")
    broken = dataclasses.replace(Binaries.ensure(), kwok=false)
    cluster = LocalCluster(tmp_path / "cluster", node_count=1, log=lambda _: None)
    try:
        cluster.up(broken, timeout=60)
    except (RuntimeError, FileNotFoundError):
        pass
    else:
        raise AssertionError("a cluster whose kwok exits must not come up")
    assert cluster.pids() == []
    assert _processes_mentioning(str(tmp_path / "cluster")) == []
