"""A real redis-server (Debian's package) on a free loopback port, with its PID tracked.

Tests stop and restart it on the same port to prove that the operator and agents survive a Redis
outage, so the port is kept in the state file across stop/start. It persists to an append-only
file in the state dir (appendonly yes; appendfsync everysec unless told otherwise), as a real
deployment should, so a restart keeps the queue: a graceful stop loses nothing, a crash (`kill()`)
at most the last second or so of writes under everysec (measured in
tests/integration/test_redis_durability.py).
"""

from __future__ import annotations

import json
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Final, Literal

from localcluster import processes
from localcluster.binaries import redis_server_binary
from localcluster.netutil import free_port
from localcluster.nodeconfig import POD_GATEWAY
from localcluster.waiting import wait_for

# Redis's own choices: fsync the AOF after every write, once a second, or when the kernel likes.
Appendfsync = Literal["always", "everysec", "no"]
APPENDFSYNC_CHOICES: Final = ("always", "everysec", "no")


@dataclass(frozen=True)
class RedisInfo:
    """How to reach the Redis this tooling runs."""

    url: str
    port: int
    reused: bool


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    """One redis-server whose state (port, PID, log) lives in ``state_dir``."""

    def __init__(self, state_dir: Path, appendfsync: Appendfsync = "everysec") -> None:
        """Manage the Redis recorded in ``state_dir`` (created on first start).

        Its data (the append-only file) lives in ``state_dir / "redis-data"``; ``appendfsync``
        is Redis's setting of that name.
        """
        if appendfsync not in APPENDFSYNC_CHOICES:
            raise ValueError(
                f"appendfsync must be one of {APPENDFSYNC_CHOICES}, not {appendfsync!r}"
            )
        self.state_dir = state_dir
        self.appendfsync = appendfsync
        self._state_file = state_dir / "redis.json"

    @property
    def data_dir(self) -> Path:
        """Where redis-server keeps its append-only file."""
        return self.state_dir / "redis-data"

    def _load(self) -> tuple[int | None, processes.ProcessRecord | None]:
        if not self._state_file.exists():
            return None, None
        data = json.loads(self._state_file.read_text())
        record = data.get("process")
        return data.get("port"), processes.ProcessRecord.from_json(record) if record else None

    def _save(self, port: int, record: processes.ProcessRecord | None) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        payload = {"port": port, "process": record.to_json() if record else None}
        self._state_file.write_text(json.dumps(payload, indent=2))

    def running(self) -> RedisInfo | None:
        """The running server's info, or None."""
        port, record = self._load()
        if port is None or record is None or not processes.is_running(record):
            return None
        return (
            RedisInfo(url=f"redis://127.0.0.1:{port}/0", port=port, reused=True)
            if _ping(port)
            else None
        )

    def up(self, timeout: float = 30.0) -> RedisInfo:
        """Start Redis (on the port it had before, if any) unless it already runs."""
        current = self.running()
        if current is not None:
            return current
        port, stale = self._load()
        if stale is not None:
            processes.stop(stale)
        if port is None or _ping(port):
            port = free_port()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        argv = [
            str(redis_server_binary()),
            # Loopback, and the real node's pod gateway when its bridge exists ("-": optional),
            # so agents in real containers reach this Redis; nothing off this host can.
            "--bind", "127.0.0.1", f"-{POD_GATEWAY}",
            "--port", str(port),
            # Protected mode refuses every non-loopback client without a password, the pods'
            # too; the binds above already keep other hosts out.
            "--protected-mode", "no",
            # The AOF alone is the persistence: no RDB snapshots besides it.
            "--save", "",
            "--appendonly", "yes",
            "--appendfsync", self.appendfsync,
            "--dir", str(self.data_dir),
            "--daemonize", "no",
        ]  # fmt: skip
        record = processes.start("redis-server", argv, self.state_dir / "logs" / "redis.log")
        self._save(port, record)
        wait_for(lambda: _ping(port), timeout, what=f"redis-server on 127.0.0.1:{port}")
        return RedisInfo(url=f"redis://127.0.0.1:{port}/0", port=port, reused=False)

    def pod_url(self) -> str | None:
        """The URL real-node pods use (through the pod gateway), if Redis runs."""
        info = self.running()
        return None if info is None else f"redis://{POD_GATEWAY}:{info.port}/0"

    def down(self) -> bool:
        """Stop Redis if it runs; keep the port so a restart reuses it. True if it was stopped."""
        port, record = self._load()
        if record is None or port is None:
            return False
        was_running = processes.is_running(record)
        processes.stop(record)
        self._save(port, None)
        return was_running

    def kill(self) -> bool:
        """Crash Redis: SIGKILL, no shutdown, no final fsync (what a power cut or OOM kill does).

        Keeps the port and the data dir, so `up()` restarts it from its append-only file. True if
        it was running.
        """
        port, record = self._load()
        if record is None or port is None or not processes.is_running(record):
            return False
        os.kill(record.pid, signal.SIGKILL)
        wait_for(lambda: not processes.is_running(record), 10, what="redis-server to die")
        self._save(port, None)
        return True

    def pids(self) -> list[int]:
        """PIDs of the recorded process that still run it (for leak checks)."""
        _, record = self._load()
        return [record.pid] if record and processes.is_running(record) else []


def default_state_dir() -> Path:
    """Where `make redis-up` keeps its state unless NEWFUSE_STATE_DIR says otherwise."""
    from localcluster.binaries import REPO_ROOT

    return Path(os.environ.get("NEWFUSE_STATE_DIR", REPO_ROOT / ".local")) / "redis"
