"""`make demo`: the operator running against the local cluster, with a sample fleet Available.

The operator runs as a tracked local process (`python -m newfuse`, exactly what the image's entry
point runs), so `make cluster-down` stops it with everything else.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from localcluster import processes
from localcluster.binaries import REPO_ROOT
from localcluster.netutil import free_port
from localcluster.podrunner import PodRunnerProcess
from localcluster.waiting import wait_for

CRD = REPO_ROOT / "crds" / "newfuse.io_newfuseagents.yaml"
SAMPLE = REPO_ROOT / "crds" / "samples" / "summarizer.yaml"
DEMO_NAMESPACE = "newfuse-demo"


class OperatorRunner:
    """One operator process whose PID and ports live in ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        """Manage the operator recorded in ``state_dir``."""
        self.state_dir = state_dir
        self._state_file = state_dir / "operator.json"

    def _load(self) -> dict[str, object]:
        return dict(json.loads(self._state_file.read_text())) if self._state_file.exists() else {}

    def _record(self) -> processes.ProcessRecord | None:
        data = self._load().get("process")
        return processes.ProcessRecord.from_json(data) if isinstance(data, dict) else None

    def running(self) -> bool:
        """Whether the recorded operator process is alive."""
        record = self._record()
        return record is not None and processes.is_running(record)

    def up(self, kubeconfig: Path, redis_url: str, log: Callable[[str], None]) -> None:
        """Start the operator unless it runs; wait for its liveness endpoint."""
        if self.running():
            log("operator already running")
            return
        metrics_port, health_port = free_port(), free_port()
        env = {
            "NEWFUSE_KUBECONFIG": str(kubeconfig),
            "NEWFUSE_REDIS_URL": redis_url,
            "NEWFUSE_METRICS_PORT": str(metrics_port),
            "NEWFUSE_HEALTH_ENDPOINT": f"http://127.0.0.1:{health_port}/healthz",
            "NEWFUSE_LOG_FORMAT": os.environ.get("NEWFUSE_LOG_FORMAT", "json"),
        }
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
                    "metrics_port": metrics_port,
                    "health_port": health_port,
                }
            )
        )

        def healthy() -> bool:
            if not processes.is_running(record):
                raise RuntimeError(f"the operator exited; see {record.log}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{health_port}/healthz", timeout=1):
                    return True
            except OSError:
                return False

        wait_for(healthy, 60, what="operator liveness")
        log(
            f"operator running (pid {record.pid}), metrics at http://127.0.0.1:{metrics_port}/metrics"
        )

    def down(self) -> bool:
        """Stop the operator if it runs. True if it was stopped."""
        record = self._record()
        if record is None or not processes.is_running(record):
            return False
        processes.stop(record)
        return True

    def pids(self) -> list[int]:
        """PIDs still running (for leak checks)."""
        record = self._record()
        return [record.pid] if record and processes.is_running(record) else []


def run_demo(
    kubectl: Path, kubeconfig: Path, redis_url: str, state_dir: Path, log: Callable[[str], None]
) -> None:
    """Install the CRD, start the operator, apply the sample fleet and show it Available."""

    def k(*args: str, stdin: str | None = None) -> str:
        return subprocess.run(
            [str(kubectl), "--kubeconfig", str(kubeconfig), *args],
            input=stdin, check=True, capture_output=True, text=True,
        ).stdout  # fmt: skip

    log("installing the NewFuseAgent CRD")
    k("apply", "--server-side", "--force-conflicts", "-f", str(CRD))
    k("wait", "--for=condition=Established", "crd/newfuseagents.newfuse.io", "--timeout=60s")
    OperatorRunner(state_dir).up(kubeconfig, redis_url, log)
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

    # kwok runs no processes: the pod runner starts each agent pod's container as a local process.
    runner = PodRunnerProcess(state_dir.parent / "podrunner")
    runner.up(kubeconfig, redis_url, log)
    wait_for(
        lambda: len([a for a in runner.agents() if a.namespace == DEMO_NAMESPACE]) >= 3,
        60,
        what="3 agent processes",
    )

    def completed() -> int:
        body = json.loads(k("get", "nfa", "summarizer", "-n", DEMO_NAMESPACE, "-o", "json"))
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
    log("the operator folded the agents' reports into the fleet's status:")
    print(k("get", "nfa", "-n", DEMO_NAMESPACE, "-o", "wide"))
    print(k("get", "pods", "-n", DEMO_NAMESPACE, "-L", "newfuse.io/revision"))
    subprocess.run([newfuse, "agents", "summarizer", "-n", DEMO_NAMESPACE], check=True, env=env)
