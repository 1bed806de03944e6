"""Where a benchmark runs, how big it is, and how it hands back its figures.

By default (`make bench`) each benchmark gets a dedicated control plane, Redis and operator under
`.local/bench/<name>/`, torn down afterwards, so it never measures (or disturbs) the developer's
cluster. With NEWFUSE_BENCH_KUBECONFIG, NEWFUSE_BENCH_REDIS_URL and NEWFUSE_BENCH_OPERATOR_PID it
runs on an existing cluster, Redis and operator instead (the CI smoke test passes the test
session's), in namespaces and keys of its own that it removes afterwards: starting a control plane
per benchmark would cost CI more than the benchmarks themselves.

NEWFUSE_BENCH_TINY=1 shrinks every benchmark to a smoke size (seconds, not minutes), so CI runs
each one and a broken benchmark fails there instead of in the next `make bench`. Tiny figures mean
nothing; only the full sizes are quoted.

Every benchmark ends with one `BENCH-FIGURES {json}` line on stdout: the numbers it printed in its
table, for scripts that aggregate repeated runs (and for the smoke test, which requires it).
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

import redis
from kubernetes import client as k8s_client
from kubernetes import config as k8s_config
from rich.console import Console

from localcluster import LocalCluster, RedisServer, wait_established
from localcluster.binaries import REPO_ROOT, Binaries
from localcluster.demo import CRD, OperatorRunner

console = Console()
T = TypeVar("T")

TINY_ENV = "NEWFUSE_BENCH_TINY"
KUBECONFIG_ENV = "NEWFUSE_BENCH_KUBECONFIG"
REDIS_ENV = "NEWFUSE_BENCH_REDIS_URL"
OPERATOR_PID_ENV = "NEWFUSE_BENCH_OPERATOR_PID"
FIGURES_MARK = "BENCH-FIGURES"
STATE_ROOT = REPO_ROOT / ".local" / "bench"


def tiny() -> bool:
    """Whether NEWFUSE_BENCH_TINY asks for smoke sizes."""
    return os.environ.get(TINY_ENV, "").lower() not in ("", "0", "false", "no")


def size(full: T, smoke: T) -> T:
    """``smoke`` in tiny mode, else ``full``."""
    return smoke if tiny() else full


def report_figures(bench: str, figures: Mapping[str, float | int]) -> None:
    """Print the machine-readable figures line; refuse a figure that is not a finite number."""
    bad = {k: v for k, v in figures.items() if not math.isfinite(float(v))}
    if bad or not figures:
        raise ValueError(f"{bench}: no figures or non-finite figures: {bad or figures}")
    line = json.dumps({"bench": bench, "tiny": tiny(), **figures}, sort_keys=True)
    print(f"{FIGURES_MARK} {line}", flush=True)  # plain print: rich would wrap the JSON


@dataclass
class BenchEnvironment:
    """What a benchmark talks to."""

    api: k8s_client.ApiClient
    operator: OperatorRunner
    kubeconfig: Path
    redis_url: str
    namespaces: dict[str, str]
    operator_pid: int | None = None
    shared: bool = False

    def namespace(self, base: str) -> str:
        """The real name of the namespace the benchmark calls ``base``."""
        return self.namespaces[base]

    def start_operator(self) -> int:
        """Start the operator (timed phases may want it started late); returns its PID."""
        if self.operator_pid is not None:
            return self.operator_pid  # shared mode: the session's operator reconciles everything
        if self.shared:
            # Only our namespaces: other users' fleets on a shared cluster are not ours to touch.
            os.environ["NEWFUSE_NAMESPACES"] = ",".join(self.namespaces.values())
        self.operator.up(self.kubeconfig, self.redis_url, lambda m: console.print(f"[dim]{m}"))
        return operator_pid(self.operator.pids())


def operator_pid(pids: list[int]) -> int:
    """The operator's PID among the runner's: it starts the fleet API gateway beside it.

    Measured figures (peak RSS) must be the operator's, and the runner's list has no order to rely
    on, so the command line decides: `python -m newfuse`, not `python -m newfuse.fleetapi`.
    """
    found = [
        p
        for p in pids
        if Path(f"/proc/{p}/cmdline").read_bytes().split(b"\0")[-2:-1] == [b"newfuse"]
    ]
    if len(found) != 1:
        raise RuntimeError(f"expected one operator among PIDs {pids}, found {found}")
    return found[0]


@dataclass(frozen=True)
class BenchRedis:
    """A Redis for a benchmark; ``shared`` means other users' keys live there too (no FLUSHDB)."""

    url: str
    shared: bool

    def clear(self, *patterns: str) -> None:
        """Empty a dedicated Redis; on a shared one delete only keys matching ``patterns``."""
        client = redis.Redis.from_url(self.url)
        try:
            if not self.shared:
                client.flushdb()
                return
            for pattern in patterns:
                batch = list(client.scan_iter(match=pattern, count=1000))
                for start in range(0, len(batch), 500):
                    client.unlink(*batch[start : start + 500])
        finally:
            client.close()


@contextmanager
def bench_redis(name: str) -> Iterator[BenchRedis]:
    """NEWFUSE_BENCH_REDIS_URL if set, else a dedicated redis-server stopped afterwards."""
    shared = os.environ.get(REDIS_ENV)
    if shared:
        yield BenchRedis(shared, shared=True)
        return
    server = RedisServer(STATE_ROOT / name / "redis")
    info = server.up()
    try:
        yield BenchRedis(info.url, shared=False)
    finally:
        server.down()


@contextmanager
def bench_environment(
    name: str, namespaces: tuple[str, ...], *, keep: bool = False
) -> Iterator[BenchEnvironment]:
    """A cluster with the CRD installed and ``namespaces`` created, plus Redis (see module doc)."""
    if os.environ.get(KUBECONFIG_ENV):
        with _shared_environment(name, namespaces) as env:
            yield env
        return
    state = STATE_ROOT / name
    binaries = Binaries.ensure()
    cluster = LocalCluster(
        state / "cluster", node_count=3, log=lambda m: console.print(f"[dim]{m}")
    )
    redis_server = RedisServer(state / "redis")
    operator = OperatorRunner(state / "operator")
    try:
        info = cluster.up(binaries)
        redis_info = redis_server.up()
        api = k8s_config.new_client_from_config(config_file=str(info.kubeconfig))  # type: ignore[no-untyped-call]
        core = k8s_client.CoreV1Api(api)
        for ns in namespaces:
            core.create_namespace(k8s_client.V1Namespace(metadata=k8s_client.V1ObjectMeta(name=ns)))
        kubectl = [str(binaries.kubectl), "--kubeconfig", str(info.kubeconfig)]
        subprocess.run(
            [*kubectl, "apply", "--server-side", "-f", str(CRD)], check=True, capture_output=True
        )
        wait_established(
            lambda *args: (
                subprocess.run([*kubectl, *args], check=True, capture_output=True, text=True).stdout
            ),
            "newfuseagents.newfuse.io",
        )
        yield BenchEnvironment(
            api, operator, info.kubeconfig, redis_info.url, {ns: ns for ns in namespaces}
        )
    finally:
        if not keep:
            operator.down()
            cluster.down(quiet=True)
            redis_server.down()


@contextmanager
def _shared_environment(name: str, namespaces: tuple[str, ...]) -> Iterator[BenchEnvironment]:
    """The existing cluster (its CRD already installed), in fresh namespaces deleted afterwards."""
    kubeconfig = Path(os.environ[KUBECONFIG_ENV])
    redis_url = os.environ.get(REDIS_ENV, "")
    pid = os.environ.get(OPERATOR_PID_ENV)
    if not redis_url and not pid:
        raise RuntimeError(f"{KUBECONFIG_ENV} needs {OPERATOR_PID_ENV} or {REDIS_ENV} as well")
    api = k8s_config.new_client_from_config(config_file=str(kubeconfig))  # type: ignore[no-untyped-call]
    core = k8s_client.CoreV1Api(api)
    suffix = uuid.uuid4().hex[:6]
    real = {ns: f"{ns}-{suffix}" for ns in namespaces}
    operator = OperatorRunner(STATE_ROOT / f"{name}-{suffix}" / "operator")
    try:
        for ns in real.values():
            core.create_namespace(
                k8s_client.V1Namespace(
                    metadata=k8s_client.V1ObjectMeta(name=ns, labels={"newfuse.io/bench": name})
                )
            )
        yield BenchEnvironment(
            api, operator, kubeconfig, redis_url, real, int(pid) if pid else None, shared=True
        )
    finally:
        operator.down()
        for ns in real.values():
            core.delete_namespace(ns)
