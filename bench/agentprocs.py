"""NewFuse agents as local processes, the way pods run them, for the task benchmarks.

The benchmarks talk to the agents only as a client and a scraper would: through Redis, and through
each agent's /metrics endpoint.
"""

from __future__ import annotations

import os
import subprocess
import sys
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from localcluster.netutil import free_port


def spawn(argv: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    """Start ``argv`` with its output in ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("wb") as out:
        return subprocess.Popen(argv, env=env, stdout=out, stderr=subprocess.STDOUT)


def stop(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM each, then wait (SIGKILL after 30 s)."""
    for proc in procs:
        proc.terminate()
    for proc in procs:
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@dataclass
class Agent:
    """One `python -m newfuse_agent` process."""

    proc: subprocess.Popen[bytes]
    http_port: int
    log: Path

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Its Prometheus samples: (name, sorted labels) -> value."""
        url = f"http://127.0.0.1:{self.http_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as response:
            text = response.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def sample(self, name: str, **labels: str) -> float:
        """One sample's value (0 if the agent has not exported it yet)."""
        return self.metrics().get((name, tuple(sorted(labels.items()))), 0.0)


def start_agents(
    url: str, namespace: str, fleet: str, count: int, concurrency: int, state: Path
) -> list[Agent]:
    """``count`` agents of ``namespace/fleet``, with the env the operator would give them."""
    agents = []
    for index in range(count):
        port = free_port()
        env = {
            **os.environ,
            "NEWFUSE_AGENT_ID": f"{fleet}-bench-{index}",
            "NEWFUSE_NAMESPACE": namespace,
            "NEWFUSE_FLEET": fleet,
            "NEWFUSE_REVISION": "bench",
            "NEWFUSE_REDIS_URL": url,
            "NEWFUSE_CONCURRENCY": str(concurrency),
            "NEWFUSE_HTTP_PORT": str(port),
            "NEWFUSE_HTTP_ADDRESS": "127.0.0.1",
            "NEWFUSE_LOG_LEVEL": "WARNING",
        }
        log = state / f"agent-{index}.log"
        agents.append(Agent(spawn([sys.executable, "-m", "newfuse_agent"], env, log), port, log))
    return agents


def stop_agents(agents: list[Agent]) -> None:
    """Stop every agent process."""
    stop([agent.proc for agent in agents])
