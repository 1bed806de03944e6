"""A real agent process (`python -m newfuse_agent`) for tests that need its process boundary.

The e2e suite gets agents through the operator and the pod runner; tests of the task flow itself
start them directly, with exactly the environment a pod would give them, so that what they show
is the agent as shipped: its own Redis client, its signal handling, its exit status.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path

from localcluster.netutil import free_port


class AgentProcess:
    """One agent process of fleet ``namespace/fleet`` on the Redis at ``redis_url``."""

    def __init__(
        self,
        redis_url: str,
        namespace: str,
        fleet: str,
        agent_id: str | None = None,
        env: Mapping[str, str] | None = None,
    ) -> None:
        self.agent_id = agent_id or f"agent-{uuid.uuid4().hex[:6]}"
        self.port = free_port()
        self.env = {
            **os.environ,
            "NEWFUSE_AGENT_ID": self.agent_id,
            "NEWFUSE_NAMESPACE": namespace,
            "NEWFUSE_FLEET": fleet,
            "NEWFUSE_REVISION": "r1",
            "NEWFUSE_REDIS_URL": redis_url,
            "NEWFUSE_HTTP_ADDRESS": "127.0.0.1",
            "NEWFUSE_HTTP_PORT": str(self.port),
            "NEWFUSE_HEARTBEAT_SECONDS": "1",
            **(env or {}),
        }
        self.log = Path(tempfile.mkstemp(prefix=f"{self.agent_id}-", suffix=".log")[1])
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> AgentProcess:
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "newfuse_agent"],
                env=self.env,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        return self

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL: the process dies holding whatever it holds."""
        if self.alive:
            assert self.proc is not None
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self, timeout: float = 60) -> int | None:
        """SIGTERM and wait for the drain; SIGKILL if it overruns."""
        if self.proc is None:
            return None
        if self.alive:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        return self.proc.returncode

    def output(self) -> str:
        return self.log.read_text(errors="replace")
