"""The fleet API gateway (`python -m newfuse.fleetapi`) as a child process, as a pod runs it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import urllib.request
from pathlib import Path
from types import TracebackType

from localcluster import wait_for
from localcluster.netutil import free_port


class GatewayProcess:
    """One gateway on ``redis_url``, listening on loopback at a free port."""

    def __init__(self, redis_url: str, port: int | None = None, **env: str) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "NEWFUSE_REDIS_URL": redis_url,
            "NEWFUSE_GATEWAY_HOST": "127.0.0.1",
            "NEWFUSE_GATEWAY_PORT": str(self.port),
            **env,
        }
        self.log = Path(tempfile.mkstemp(prefix="gateway-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def fleet_url(self, namespace: str, fleet: str) -> str:
        """The fleet's A2A endpoint (its Agent Card is under it)."""
        return f"{self.url}/a2a/{namespace}/{fleet}/"

    def _ready(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"gateway exited {self.proc.returncode}:\n{self.log.read_text()}")
        try:
            with urllib.request.urlopen(f"{self.url}/readyz", timeout=2) as reply:  # noqa: S310
                return bool(reply.status == 200)
        except OSError:
            return False

    def start(self) -> GatewayProcess:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "newfuse.fleetapi"],
                env=self.env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            )  # fmt: skip
        wait_for(self._ready, 30, what="the gateway to be ready")
        return self

    def stop(self) -> int | None:
        """SIGTERM (uvicorn's graceful shutdown), SIGKILL after 10 s."""
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait(10)

    def __enter__(self) -> GatewayProcess:
        return self.start()

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
