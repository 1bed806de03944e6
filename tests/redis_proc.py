"""A redis-server of one test's own, to crash, stop and restart without touching the session's.

Tests of what survives a Redis restart must never restart the shared session Redis (other tests,
and other people's runs, use it). This one has its own port and its own data dir under the test's
tmp_path, and persists to an append-only file like the local and chart Redis do, so a restart
replays it. Use it as a context manager; it is always stopped on exit.

    with DedicatedRedis(tmp_path / "redis", appendfsync="everysec") as server:
        ...write through server.url...
        server.crash()      # SIGKILL: what an OOM kill or a segfault does
        server.restart()    # same port, replays the AOF
"""

from __future__ import annotations

from pathlib import Path
from types import TracebackType

import redis

from localcluster import RedisServer, wait_for
from localcluster.redis_server import Appendfsync


class DedicatedRedis:
    """One restartable redis-server on a free loopback port, data in ``state_dir``."""

    def __init__(self, state_dir: Path, appendfsync: Appendfsync = "everysec") -> None:
        """Configure (not start) a Redis keeping its AOF under ``state_dir``."""
        self.server = RedisServer(state_dir, appendfsync=appendfsync)
        self._url: str | None = None

    @property
    def url(self) -> str:
        """redis://127.0.0.1:<its port>/0 (the same across restarts)."""
        if self._url is None:
            raise RuntimeError("the dedicated Redis was never started")
        return self._url

    @property
    def aof_dir(self) -> Path:
        """Where its append-only file lives."""
        return self.server.data_dir

    def start(self) -> str:
        """Start it (or restart it from its AOF); returns its URL once it answers PING."""
        self._url = self.server.up().url
        return self._url

    restart = start

    def crash(self) -> None:
        """SIGKILL redis-server: no shutdown, no final fsync."""
        if not self.server.kill():
            raise RuntimeError("the dedicated Redis was not running")

    def shutdown(self) -> None:
        """A graceful SHUTDOWN: Redis writes and fsyncs its AOF, then exits."""
        client = redis.Redis.from_url(self.url, socket_timeout=10)
        try:
            client.shutdown()
        except redis.ConnectionError:
            pass  # the server closed the connection as it exited: that is the success case
        finally:
            client.close()
        wait_for(lambda: not self.server.pids(), 30, what="redis-server to exit after SHUTDOWN")

    def close(self) -> None:
        """Stop it if it runs (gracefully, then harder)."""
        self.server.down()

    def __enter__(self) -> DedicatedRedis:
        """Start it."""
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        """Stop it, whatever happened."""
        self.close()
