"""A Redis Cluster of Debian redis-servers on loopback: 3 primaries, each with one replica.

Tests point the task flow at it (`redis+cluster://` URLs, see newfuse.adapters.redis_connect) to
show that fleets spread over the primaries and that a primary failing over loses no acknowledged
result. So the cluster must fail over within seconds (``node_timeout_ms``, 2 s by default, where a
production cluster uses 15 s) and each node must be killable on its own: every node is its own
process, recorded with its port in the state file, and a killed node restarts from its own
directory (nodes.conf and append-only file) and rejoins as a replica.

Each node's cluster bus port is chosen free as well (Redis 7's `cluster-port`): the default,
port + 10000, would land in the NodePort or ephemeral range.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import redis

from localcluster import processes
from localcluster.binaries import redis_server_binary
from localcluster.netutil import free_port
from localcluster.waiting import wait_for

PRIMARIES = 3


@dataclass(frozen=True)
class NodeInfo:
    """One node as CLUSTER NODES describes it."""

    node_id: str
    port: int
    primary: bool
    failed: bool
    primary_id: str | None
    slots: int


@dataclass(frozen=True)
class RedisClusterInfo:
    """How to reach the cluster this tooling runs."""

    url: str
    ports: list[int]
    reused: bool


def _client(port: int) -> redis.Redis:
    return redis.Redis(port=port, socket_timeout=2, socket_connect_timeout=2, decode_responses=True)


def _pings(port: int) -> bool:
    try:
        return bool(_client(port).ping())
    except redis.RedisError:
        return False


def _slot_count(fields: list[str]) -> int:
    count = 0
    for field in fields:
        if field.startswith("["):  # a slot being migrated, not owned
            continue
        low, _, high = field.partition("-")
        count += int(high or low) - int(low) + 1
    return count


def parse_nodes(text: str) -> list[NodeInfo]:
    """The nodes of a CLUSTER NODES reply."""
    nodes = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 8:
            continue
        flags = fields[2].split(",")
        address = fields[1].split("@")[0]
        nodes.append(
            NodeInfo(
                node_id=fields[0],
                port=int(address.rsplit(":", 1)[1]),
                primary="master" in flags,
                failed="fail" in flags,
                primary_id=None if fields[3] == "-" else fields[3],
                slots=_slot_count(fields[8:]),
            )
        )
    return nodes


class LocalRedisCluster:
    """Six redis-servers in cluster mode whose state (ports, PIDs, data) lives in ``state_dir``."""

    def __init__(self, state_dir: Path, node_timeout_ms: int = 2000) -> None:
        """Manage the cluster recorded in ``state_dir`` (created on first start)."""
        self.state_dir = state_dir
        self.node_timeout_ms = node_timeout_ms
        self._state_file = state_dir / "redis-cluster.json"

    def _load(self) -> dict[str, dict[str, object]]:
        if not self._state_file.exists():
            return {}
        loaded: dict[str, dict[str, object]] = json.loads(self._state_file.read_text())
        return loaded

    def _save(self, nodes: dict[str, dict[str, object]]) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._state_file.write_text(json.dumps(nodes, indent=2))

    def _record(self, port: int) -> processes.ProcessRecord | None:
        raw = self._load().get(str(port), {}).get("process")
        return processes.ProcessRecord.from_json(raw) if isinstance(raw, dict) else None

    @property
    def ports(self) -> list[int]:
        """Every node's client port, in the order they were created."""
        return [int(p) for p in self._load()]

    def url(self) -> str:
        """The URL clients use: any one node is enough to find the others."""
        return f"redis+cluster://127.0.0.1:{self.ports[0]}/0"

    def _start_node(self, port: int, bus_port: int) -> processes.ProcessRecord:
        data = self.state_dir / f"node-{port}"
        data.mkdir(parents=True, exist_ok=True)
        argv = [
            str(redis_server_binary()),
            "--bind", "127.0.0.1",
            "--port", str(port),
            "--cluster-enabled", "yes",
            "--cluster-port", str(bus_port),
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", str(self.node_timeout_ms),
            # A replica that lost its primary for a while still takes over: in a test, a short
            # outage must end in a failover, never in a cluster that stays down.
            "--cluster-replica-validity-factor", "0",
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", "everysec",
            "--dir", str(data),
            "--daemonize", "no",
        ]  # fmt: skip
        return processes.start("redis-server", argv, self.state_dir / "logs" / f"{port}.log")

    def _running(self) -> bool:
        nodes = self._load()
        if len(nodes) != 2 * PRIMARIES:
            return False
        return all(self._healthy_node(int(port)) for port in nodes)

    def _healthy_node(self, port: int) -> bool:
        record = self._record(port)
        if record is None or not processes.is_running(record):
            return False
        try:
            info = _client(port).execute_command("CLUSTER", "INFO")  # type: ignore[no-untyped-call]
            return "cluster_state:ok" in str(info)
        except redis.RedisError:
            return False

    def up(self, timeout: float = 60.0) -> RedisClusterInfo:
        """Start the cluster unless it already runs healthy; a broken one is made afresh."""
        if self._running():
            return RedisClusterInfo(self.url(), self.ports, reused=True)
        self.down()
        self._save({})
        nodes: dict[str, dict[str, object]] = {}
        for _ in range(2 * PRIMARIES):
            port, bus = free_port(), free_port()
            nodes[str(port)] = {"bus_port": bus, "process": self._start_node(port, bus).to_json()}
        self._save(nodes)
        ports = self.ports
        for port in ports:
            wait_for(partial(_pings, port), timeout, what=f"redis node {port}")
        # redis-cli makes the first three primaries and gives each one replica.
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "1", "--cluster-yes"],
            check=True, capture_output=True, timeout=timeout,
        )  # fmt: skip
        self.wait_healthy(timeout)
        return RedisClusterInfo(self.url(), ports, reused=False)

    def nodes(self) -> list[NodeInfo]:
        """The cluster as the first node that answers sees it."""
        for port in self.ports:
            try:
                reply = _client(port).execute_command("CLUSTER", "NODES")  # type: ignore[no-untyped-call]
                return parse_nodes(str(reply))
            except redis.RedisError:
                continue
        return []

    def primaries(self) -> list[NodeInfo]:
        """The primaries that own slots and are not failed."""
        return [n for n in self.nodes() if n.primary and not n.failed and n.slots]

    def wait_healthy(self, timeout: float = 60.0) -> None:
        """Wait until every node says the cluster is ok, with 3 primaries each having a replica."""

        def healthy() -> bool:
            if not all(self._healthy_node(p) for p in self.ports):
                return False
            nodes = self.nodes()
            primaries = {n.node_id for n in nodes if n.primary and not n.failed and n.slots}
            replicated = {n.primary_id for n in nodes if not n.primary and not n.failed}
            return len(primaries) == PRIMARIES and primaries <= replicated

        wait_for(healthy, timeout, what="the Redis cluster to be ok with a replica per primary")

    def alive(self, port: int) -> bool:
        """Whether the node on ``port`` runs."""
        record = self._record(port)
        return record is not None and processes.is_running(record)

    def kill(self, port: int) -> bool:
        """SIGKILL one node (a crash: no shutdown, no final fsync). True if it was running."""
        record = self._record(port)
        if record is None or not processes.is_running(record):
            return False
        os.kill(record.pid, signal.SIGKILL)
        wait_for(lambda: not processes.is_running(record), 10, what=f"redis node {port} to die")
        return True

    def restart(self, port: int) -> None:
        """Start a killed node again from its own directory; it rejoins the cluster."""
        nodes = self._load()
        bus = nodes[str(port)]["bus_port"]
        assert isinstance(bus, int)
        nodes[str(port)]["process"] = self._start_node(port, bus).to_json()
        self._save(nodes)

    def down(self) -> None:
        """Stop every node and forget the cluster: the next `up` makes a fresh one."""
        for port in self.ports:
            record = self._record(port)
            if record is not None:
                processes.stop(record)
        for port in self.ports:
            shutil.rmtree(self.state_dir / f"node-{port}", ignore_errors=True)
        self._save({})

    def pids(self) -> list[int]:
        """PIDs of the recorded nodes that still run (for leak checks)."""
        records = [self._record(p) for p in self.ports]
        return [r.pid for r in records if r is not None and processes.is_running(r)]


def default_state_dir() -> Path:
    """Where the cluster keeps its state unless NEWFUSE_STATE_DIR says otherwise."""
    from localcluster.binaries import REPO_ROOT

    return Path(os.environ.get("NEWFUSE_STATE_DIR", REPO_ROOT / ".local")) / "redis-cluster"


def main(argv: list[str]) -> int:
    """`python -m localcluster.redis_cluster up|down`: start (or reuse) or stop the cluster."""
    cluster = LocalRedisCluster(default_state_dir())
    command = argv[0] if argv else "up"
    if command == "up":
        sys.stdout.write(f"export NEWFUSE_REDIS_URL={cluster.up().url}\n")
    elif command == "down":
        cluster.down()
    else:
        sys.stderr.write("usage: python -m localcluster.redis_cluster up|down\n")
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
