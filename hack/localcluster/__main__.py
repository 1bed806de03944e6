"""`python -m localcluster up|down|status|redis-up|redis-down|env`: what the Makefile calls."""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

from rich.console import Console
from rich.table import Table

from localcluster.binaries import Binaries
from localcluster.cluster import LocalCluster
from localcluster.cluster import default_state_dir as cluster_state_dir
from localcluster.demo import OperatorRunner, RealNodeDemo, run_demo
from localcluster.podrunner import PodRunnerProcess
from localcluster.redis_server import RedisServer
from localcluster.redis_server import default_state_dir as redis_state_dir

console = Console(stderr=True)


def _log(message: str) -> None:
    console.print(f"[dim]{time.strftime('%H:%M:%S')}[/] {message}")


def _summary(cluster: LocalCluster, redis: RedisServer) -> None:
    info, redis_info = cluster.running(), redis.running()
    table = Table(title="NewFuse local environment", show_lines=False)
    table.add_column("what")
    table.add_column("state")
    table.add_column("how to reach it")
    table.add_row(
        "control plane",
        "[green]running[/]" if info else "[red]stopped[/]",
        f"export KUBECONFIG={cluster.kubeconfig}" if info else "make cluster-up",
    )
    table.add_row(
        "redis",
        "[green]running[/]" if redis_info else "[red]stopped[/]",
        f"export NEWFUSE_REDIS_URL={redis_info.url}" if redis_info else "make redis-up",
    )
    node = cluster.real_node()
    running = node.running()
    table.add_row(
        "real node",
        f"[green]{running.name} Ready[/]" if running else "[yellow]off[/]",
        "kubectl get pods -o wide (NODE)" if running else node.unavailable_reason() or "",
    )
    console.print(table)
    if info:
        kubectl = cluster.state_dir.parent / "bin" / "kubectl"
        subprocess.run(
            [str(kubectl), "--kubeconfig", str(cluster.kubeconfig), "get", "nodes", "-o", "wide"],
            check=False,
        )


def _real_node_demo(cluster: LocalCluster, redis: RedisServer) -> RealNodeDemo | None:
    """Build and import the images if the real node runs (the first time takes minutes)."""
    node, pod_url = cluster.real_node().running(), redis.pod_url()
    if node is None or pod_url is None:
        reason = cluster.real_node().unavailable_reason() or "it is not running"
        _log(f"[yellow]no real node[/] ({reason}): every agent runs on kwok")
        return None
    from localcluster import images

    _log("building the images from the Dockerfile's operator and agent targets (cached)")
    built = images.ensure_images(node.containerd_socket, _log)
    return RealNodeDemo(built.agent, pod_url)


@dataclass(frozen=True)
class _Parts:
    """What the commands act on, found in the default state directories."""

    cluster: LocalCluster
    redis: RedisServer
    operator: OperatorRunner
    runner: PodRunnerProcess


def _build(parts: _Parts) -> int:
    Binaries.ensure(link_dir=parts.cluster.state_dir.parent / "bin")
    return 0


def _up(parts: _Parts) -> int:
    parts.cluster.up(real_node=True)
    redis_info = parts.redis.up()
    _log(f"redis {'already running' if redis_info.reused else 'started'} at {redis_info.url}")
    _summary(parts.cluster, parts.redis)
    return 0


def _redis_up(parts: _Parts) -> int:
    _log(f"redis at {parts.redis.up().url}")
    return 0


def _demo(parts: _Parts) -> int:
    cluster, redis, operator = parts.cluster, parts.redis, parts.operator
    up = cluster.up(real_node=True)
    redis_info = redis.up()
    kubectl = cluster.state_dir.parent / "bin" / "kubectl"
    real = _real_node_demo(cluster, redis)
    run_demo(kubectl, up.kubeconfig, redis_info.url, operator.state_dir, _log, real)
    _summary(cluster, redis)
    console.print(
        f"[bold]Next:[/] export KUBECONFIG={up.kubeconfig}; kubectl get nfa -A -w   "
        f"(operator log: {operator.state_dir / 'logs' / 'operator.log'}; "
        "stop everything: make cluster-down)"
    )
    return 0


def _down(parts: _Parts) -> int:
    if parts.runner.down():
        _log("stopped the pod runner and its agents")
    if parts.operator.down():
        _log("stopped the operator")
    parts.cluster.down()
    if parts.redis.down():
        _log("stopped redis-server")
    leftover = parts.cluster.pids() + parts.redis.pids() + parts.operator.pids()
    leftover += parts.runner.pids()
    if leftover:
        _log(f"[red]processes still running: {leftover}[/]")
        return 1
    _log("nothing of ours is running")
    return 0


def _redis_down(parts: _Parts) -> int:
    parts.redis.down()
    return 0


def _status(parts: _Parts) -> int:
    _summary(parts.cluster, parts.redis)
    return 0


def _env(parts: _Parts) -> int:
    info, running_redis = parts.cluster.running(), parts.redis.running()
    if info:
        print(f"export KUBECONFIG={info.kubeconfig}")
    if running_redis:
        print(f"export NEWFUSE_REDIS_URL={running_redis.url}")
    return 0


COMMANDS: dict[str, Callable[[_Parts], int]] = {
    "up": _up, "down": _down, "status": _status, "redis-up": _redis_up,
    "redis-down": _redis_down, "env": _env, "build": _build, "demo": _demo,
}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Parse the command line and run one command."""
    parser = argparse.ArgumentParser(prog="python -m localcluster", description=__doc__)
    parser.add_argument("command", choices=list(COMMANDS))
    parser.add_argument("--nodes", type=int, default=3, help="fake kwok nodes (default 3)")
    args = parser.parse_args(argv)
    cluster = LocalCluster(cluster_state_dir(), node_count=args.nodes, log=_log)
    parts = _Parts(
        cluster,
        RedisServer(redis_state_dir()),
        OperatorRunner(cluster.state_dir.parent / "operator"),
        PodRunnerProcess(cluster.state_dir.parent / "podrunner"),
    )
    return COMMANDS[args.command](parts)


if __name__ == "__main__":
    sys.exit(main())
