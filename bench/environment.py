"""A dedicated control plane, Redis and operator for one benchmark, torn down afterwards.

Each benchmark gets its own state directory under `.local/bench/`, so it never measures (or
disturbs) the developer's cluster.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from rich.console import Console

from localcluster import LocalCluster, RedisServer
from localcluster.binaries import REPO_ROOT, Binaries
from localcluster.demo import CRD, OperatorRunner

console = Console()


@dataclass
class BenchEnvironment:
    """What a benchmark talks to."""

    api: k8s_client.ApiClient
    operator: OperatorRunner
    kubeconfig: Path
    redis_url: str

    def start_operator(self) -> int:
        """Start the operator (timed phases may want it started late); returns its PID."""
        self.operator.up(self.kubeconfig, self.redis_url, lambda m: console.print(f"[dim]{m}"))
        [pid] = self.operator.pids()
        return pid


@contextmanager
def bench_environment(
    name: str, namespaces: tuple[str, ...], keep: bool = False
) -> Iterator[BenchEnvironment]:
    """A fresh cluster with the CRD installed and ``namespaces`` created, plus Redis."""
    state = REPO_ROOT / ".local" / "bench" / name
    binaries = Binaries.ensure()
    cluster = LocalCluster(
        state / "cluster", node_count=3, log=lambda m: console.print(f"[dim]{m}")
    )
    redis = RedisServer(state / "redis")
    operator = OperatorRunner(state / "operator")
    try:
        info = cluster.up(binaries)
        redis_info = redis.up()
        api = k8s_config.new_client_from_config(config_file=str(info.kubeconfig))  # type: ignore[no-untyped-call]
        core = k8s_client.CoreV1Api(api)
        for ns in namespaces:
            core.create_namespace(k8s_client.V1Namespace(metadata=k8s_client.V1ObjectMeta(name=ns)))
        kubectl = [str(binaries.kubectl), "--kubeconfig", str(info.kubeconfig)]
        subprocess.run(
            [*kubectl, "apply", "--server-side", "-f", str(CRD)], check=True, capture_output=True
        )
        subprocess.run(
            [*kubectl, "wait", "--for=condition=Established", "crd/newfuseagents.newfuse.io"],
            check=True,
            capture_output=True,
        )
        yield BenchEnvironment(api, operator, info.kubeconfig, redis_info.url)
    finally:
        if not keep:
            operator.down()
            cluster.down(quiet=True)
            redis.down()
