"""`make demo`: the operator running against the local cluster, with a sample fleet Available.

The operator and the fleet API gateway run as tracked local processes (`python -m newfuse` and
`python -m newfuse.fleetapi`, exactly what the image's entry points run), so `make cluster-down`
stops them with everything else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import yaml

from localcluster import processes
from localcluster.a2ademo import show_fleet_api
from localcluster.binaries import REPO_ROOT
from localcluster.netutil import free_port
from localcluster.podrunner import PodRunnerProcess
from localcluster.waiting import wait_established, wait_for

CRD = REPO_ROOT / "crds" / "newfuse.io_newfuseagents.yaml"
SAMPLE = REPO_ROOT / "crds" / "samples" / "summarizer.yaml"
DEMO_NAMESPACE = "newfuse-demo"


REAL_SAMPLE = REPO_ROOT / "crds" / "samples" / "summarizer-real-node.yaml"
REAL_FLEET = "summarizer-real"


@dataclass(frozen=True)
class RealNodeDemo:
    """What the demo needs of the real node: the agent image it built, the pods' Redis URL."""

    agent_image: str
    agent_redis_url: str


def _real_node_fleet(
    k: Callable[..., str], real_node: RealNodeDemo, log: Callable[[str], None]
) -> None:
    """Apply the real-node sample with the image built here, and wait for it to be Available."""
    body = yaml.safe_load(REAL_SAMPLE.read_text())
    body["spec"]["image"] = real_node.agent_image
    log(f"applying {REAL_SAMPLE.relative_to(REPO_ROOT)} (image {real_node.agent_image})")
    k("apply", "-n", DEMO_NAMESPACE, "-f", "-", stdin=yaml.safe_dump(body))
    started = time.monotonic()

    def available() -> bool:
        got = json.loads(k("get", "nfa", REAL_FLEET, "-n", DEMO_NAMESPACE, "-o", "json"))
        return (got.get("status") or {}).get("phase") == "Available"

    wait_for(available, 180, what=f"{REAL_FLEET} Available on the real node")
    log(f"{REAL_FLEET} Available after {time.monotonic() - started:.1f}s: a real container")


class OperatorRunner:
    """The operator and its fleet API gateway, with their PIDs and ports kept in ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        """Manage the operator recorded in ``state_dir``."""
        self.state_dir = state_dir
        self._state_file = state_dir / "operator.json"

    def _load(self) -> dict[str, object]:
        return dict(json.loads(self._state_file.read_text())) if self._state_file.exists() else {}

    def _record(self, name: str = "process") -> processes.ProcessRecord | None:
        data = self._load().get(name)
        return processes.ProcessRecord.from_json(data) if isinstance(data, dict) else None

    @property
    def gateway_url(self) -> str | None:
        """Where the gateway listens, once started."""
        port = self._load().get("gateway_port")
        return f"http://127.0.0.1:{port}" if port else None

    def running(self) -> bool:
        """Whether the recorded operator process is alive."""
        record = self._record()
        return record is not None and processes.is_running(record)

    def up(
        self,
        kubeconfig: Path,
        redis_url: str,
        log: Callable[[str], None],
        agent_redis_url: str | None = None,
    ) -> None:
        """Start the operator unless it runs; wait for its liveness endpoint.

        ``agent_redis_url``: the URL agent pods get, when it differs from the operator's (real
        containers reach Redis through the real node's pod gateway, not the loopback).
        """
        if self.running():
            log("operator already running")
            return
        metrics_port, health_port, gateway_port = free_port(), free_port(), free_port()
        gateway = processes.start(
            "newfuse-gateway",
            [sys.executable, "-m", "newfuse.fleetapi"],
            self.state_dir / "logs" / "gateway.log",
            {
                "NEWFUSE_KUBECONFIG": str(kubeconfig),
                "NEWFUSE_REDIS_URL": redis_url,
                "NEWFUSE_GATEWAY_HOST": "127.0.0.1",
                "NEWFUSE_GATEWAY_PORT": str(gateway_port),
            },
        )
        env = {
            "NEWFUSE_GATEWAY_URL": f"http://127.0.0.1:{gateway_port}",
            "NEWFUSE_KUBECONFIG": str(kubeconfig),
            "NEWFUSE_REDIS_URL": redis_url,
            "NEWFUSE_METRICS_PORT": str(metrics_port),
            "NEWFUSE_HEALTH_ENDPOINT": f"http://127.0.0.1:{health_port}/healthz",
            "NEWFUSE_LOG_FORMAT": os.environ.get("NEWFUSE_LOG_FORMAT", "json"),
        }
        if agent_redis_url:
            env["NEWFUSE_AGENT_REDIS_URL"] = agent_redis_url
        record = processes.start(
            "newfuse-operator",
            [sys.executable, "-m", "newfuse"],
            self.state_dir / "logs" / "operator.log",
            env,
        )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._state_file.write_text(
            json.dumps(
                {
                    "process": record.to_json(),
                    "gateway": gateway.to_json(),
                    "gateway_port": gateway_port,
                    "metrics_port": metrics_port,
                    "health_port": health_port,
                }
            )
        )

        health = f"http://127.0.0.1:{health_port}/healthz"
        wait_for(lambda: _serves(record, health), 60, what="operator liveness")
        wait_for(
            lambda: _serves(gateway, f"http://127.0.0.1:{gateway_port}/readyz"),
            60,
            what="the fleet API gateway",
        )
        log(
            f"operator running (pid {record.pid}), metrics at http://127.0.0.1:{metrics_port}/metrics"
        )
        log(f"fleet API gateway running (pid {gateway.pid}) at http://127.0.0.1:{gateway_port}")

    def _records(self) -> list[processes.ProcessRecord]:
        found = [self._record(), self._record("gateway")]
        return [r for r in found if r is not None and processes.is_running(r)]

    def down(self) -> bool:
        """Stop the operator and the gateway if they run. True if one was stopped."""
        running = self._records()
        for record in running:
            processes.stop(record)
        return bool(running)

    def pids(self) -> list[int]:
        """PIDs still running (for leak checks)."""
        return [r.pid for r in self._records()]


def _serves(record: processes.ProcessRecord, url: str) -> bool:
    if not processes.is_running(record):
        raise RuntimeError(f"{record.name} exited; see {record.log}")
    try:
        with urllib.request.urlopen(url, timeout=1):  # noqa: S310 - our own loopback URL
            return True
    except OSError:
        return False


FACTS = (
    "Orders to Switzerland ship from the Lyon warehouse.",
    "Refunds above 500 euros need a manager's approval.",
    "The support desk answers in English and French.",
)


def _memory_demo(newfuse: str, env: dict[str, str], log: Callable[[str], None]) -> None:
    """Agents remember facts through the built-in `remember` handler; the CLI recalls one."""
    log("fleet memory: the agents remember three facts (`--handler remember`)")
    for fact in FACTS:
        remember = ["task", "submit", "summarizer", "-n", DEMO_NAMESPACE, "--handler", "remember"]
        payload = json.dumps({"text": fact})
        subprocess.run([newfuse, *remember, "--payload", payload, "--wait"], check=True, env=env)
    question = "Who has to approve a large refund?"
    log(f"and recall by meaning: `newfuse memory search summarizer {question!r}`")
    search = ["memory", "search", "summarizer", question, "-n", DEMO_NAMESPACE, "-k", "2"]
    subprocess.run([newfuse, *search], check=True, env=env)


def run_demo(
    kubectl: Path,
    kubeconfig: Path,
    redis_url: str,
    state_dir: Path,
    log: Callable[[str], None],
    real_node: RealNodeDemo | None = None,
) -> None:
    """Install the CRD, start the operator, apply the sample fleet and show it Available.

    With ``real_node``, one more sample fleet runs its agent as a real container there.
    """

    def k(*args: str, stdin: str | None = None) -> str:
        return subprocess.run(
            [str(kubectl), "--kubeconfig", str(kubeconfig), *args],
            input=stdin, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip

    log("installing the NewFuseAgent CRD")
    k("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    wait_established(k, "newfuseagents.newfuse.io")
    OperatorRunner(state_dir).up(
        kubeconfig, redis_url, log, real_node.agent_redis_url if real_node else None
    )
    k(
        "apply",
        "-f",
        "-",
        stdin=k("create", "namespace", DEMO_NAMESPACE, "--dry-run=client", "-o", "yaml"),
    )
    log(f"applying {SAMPLE.relative_to(REPO_ROOT)} in namespace {DEMO_NAMESPACE}")
    k("apply", "-n", DEMO_NAMESPACE, "-f", str(SAMPLE))
    started = time.monotonic()

    def available() -> bool:
        body = json.loads(k("get", "nfa", "summarizer", "-n", DEMO_NAMESPACE, "-o", "json"))
        status = body.get("status") or {}
        return bool(
            status.get("phase") == "Available"
            and status.get("observedGeneration") == body["metadata"]["generation"]
        )

    wait_for(available, 120, what="the sample fleet to be Available")
    log(f"sample fleet Available after {time.monotonic() - started:.1f}s")
    if real_node is not None:
        _real_node_fleet(k, real_node, log)

    # kwok runs no processes: the pod runner starts each agent pod's container as a local process.
    runner = PodRunnerProcess(state_dir.parent / "podrunner")
    runner.up(kubeconfig, redis_url, log)
    wait_for(
        lambda: len([a for a in runner.agents() if a.namespace == DEMO_NAMESPACE]) >= 3,
        60,
        what="3 agent processes",
    )

    def completed(fleet: str = "summarizer") -> int:
        body = json.loads(k("get", "nfa", fleet, "-n", DEMO_NAMESPACE, "-o", "json"))
        return int(((body.get("status") or {}).get("metrics") or {}).get("tasksCompleted") or 0)

    tasks, before = 500, completed()
    log(f"submitting {tasks} echo tasks with `newfuse task submit summarizer --count {tasks}`")
    newfuse = str(Path(sys.executable).with_name("newfuse"))
    env = {**os.environ, "NEWFUSE_REDIS_URL": redis_url}
    submit = ["task", "submit", "summarizer", "-n", DEMO_NAMESPACE, "--count", str(tasks)]
    subprocess.run([newfuse, *submit, "--payload", '{"text": "hi"}'], check=True, env=env)

    def counted() -> bool:
        return completed() >= before + tasks

    wait_for(counted, 120, what=f"{tasks} more tasks counted in status.metrics.tasksCompleted")
    if real_node is not None:
        real = ["task", "submit", REAL_FLEET, "-n", DEMO_NAMESPACE, "--count", "5", "--wait"]
        log(f"the real container's turn: `newfuse {' '.join(real)}`")
        real_before = completed(REAL_FLEET)
        subprocess.run([newfuse, *real, "--payload", '{"text": "hi"}'], check=True, env=env)
        wait_for(lambda: completed(REAL_FLEET) >= real_before + 5, 60, what="5 counted")
    _memory_demo(newfuse, env, log)
    log("the operator folded the agents' reports into the fleet's status:")
    print(k("get", "nfa", "-n", DEMO_NAMESPACE, "-o", "wide"))
    # NODE: kwok-node-* are kwok's (the pod runner runs those agents), the other is the real one.
    print(k("get", "pods", "-n", DEMO_NAMESPACE, "-o", "wide", "-L", "newfuse.io/revision"))
    subprocess.run([newfuse, "agents", "summarizer", "-n", DEMO_NAMESPACE], check=True, env=env)
    gateway = OperatorRunner(state_dir).gateway_url
    if gateway is not None:
        show_fleet_api(k, gateway, DEMO_NAMESPACE, "summarizer", log)
