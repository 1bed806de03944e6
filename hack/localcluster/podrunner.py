"""The local pod runner: really runs the agent containers of pods that kwok only pretends to run.

kwok makes pods scheduled on its fake nodes Running and Ready but starts no process, so the
operator would manage fleets of agents that never take a task. This runner stands in for the
kubelet on those nodes: it watches the operator's pods, starts the `agent` container of each as a
local process (with the env the kubelet would have resolved), restarts it with back-off when it
exits (restartPolicy Always) and stops it with SIGTERM, then SIGKILL after the grace period, when
the pod is deleted. Pods on real nodes are left to their kubelet.

It writes a state file listing every agent process, so tests and the demo can find an agent (to
kill it, or to read its log). Dev and test tooling only: the product never imports it.

    python -m localcluster.podrunner --kubeconfig K --redis-url U --state-dir D
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Final

from localcluster import processes
from localcluster.binaries import REPO_ROOT

# The runner is split by concern (podenv: what to run; podprocess: supervising one process;
# podwatch: the watch loop). Tests, the demo and the CLI import from here, so every name the
# runner offers stays importable from this one module.
from localcluster.podenv import (
    AGENT_IMAGE_REPOSITORY,
    HOST_ENV_WINS,
    HTTP_ADDRESS_VAR,
    HTTP_PORT_VAR,
    LOCAL_POD_IP,
    REDIS_URL_VAR,
    RUNNER_ENV_PREFIXES,
    EnvResolutionError,
    RefLookup,
    command_template,
    expand,
    image_repository,
    is_agent_image,
    local_redis_url,
    resolve_env,
    runner_base_env,
)
from localcluster.podprocess import (
    BACKOFF_INITIAL_SECONDS,
    BACKOFF_MAX_SECONDS,
    BACKOFF_RESET_AFTER_SECONDS,
    AgentEntry,
    AgentSpec,
    AgentState,
    PodProcess,
)
from localcluster.podwatch import (
    AGENT_CONTAINER,
    DEFAULT_GRACE_SECONDS,
    LABEL_SELECTOR,
    SHUTDOWN_GRACE_SECONDS,
    STATE_FILE,
    WATCH_SECONDS,
    PodPhase,
    PodRunner,
)
from localcluster.waiting import wait_for

__all__ = [
    "AGENT_CONTAINER",
    "AGENT_IMAGE_REPOSITORY",
    "BACKOFF_INITIAL_SECONDS",
    "BACKOFF_MAX_SECONDS",
    "BACKOFF_RESET_AFTER_SECONDS",
    "DEFAULT_GRACE_SECONDS",
    "HOST_ENV_WINS",
    "HTTP_ADDRESS_VAR",
    "HTTP_PORT_VAR",
    "LABEL_SELECTOR",
    "LOCAL_POD_IP",
    "RECORD_FILE",
    "REDIS_URL_VAR",
    "RUNNER_ENV_PREFIXES",
    "SHUTDOWN_GRACE_SECONDS",
    "STATE_FILE",
    "WATCH_SECONDS",
    "AgentEntry",
    "AgentSpec",
    "AgentState",
    "EnvResolutionError",
    "PodPhase",
    "PodProcess",
    "PodRunner",
    "PodRunnerProcess",
    "RefLookup",
    "command_template",
    "expand",
    "image_repository",
    "is_agent_image",
    "local_redis_url",
    "main",
    "resolve_env",
    "runner_base_env",
]

# The runner's modules share one logger, so its log reads as one program's.
log = logging.getLogger("podrunner")

RECORD_FILE: Final = "podrunner.json"


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGTERM or SIGINT, then stop every agent process."""
    parser = argparse.ArgumentParser(prog="python -m localcluster.podrunner", description=__doc__)
    parser.add_argument("--kubeconfig", type=Path, required=True)
    parser.add_argument("--redis-url", required=True, help="replaces NEWFUSE_REDIS_URL of agents")
    parser.add_argument("--state-dir", type=Path, required=True, help="state file and logs")
    parser.add_argument("--namespace", help="only this namespace (default: all)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    from kubernetes import config as k8s_config

    api = k8s_config.new_client_from_config(config_file=str(args.kubeconfig))  # type: ignore[no-untyped-call]
    runner = PodRunner(api, args.redis_url, args.state_dir, args.namespace)
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("received %s; stopping agents", signal.Signals(signum).name)
        stop.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # The watch blocks in socket reads, so it runs in a daemon thread and the main thread stays
    # free to react to signals.
    threading.Thread(target=runner.watch_forever, args=(stop,), name="watch", daemon=True).start()
    while not stop.wait(1.0):
        pass
    runner.shutdown()
    log.info("stopped")
    return 0


# ---------------------------------------------------------------------------------------------
# The runner as a tracked background process, for tests and the demo.
# ---------------------------------------------------------------------------------------------


class PodRunnerProcess:
    """One pod runner process whose PID, state file and logs live in ``state_dir``."""

    def __init__(self, state_dir: Path) -> None:
        """Manage the pod runner recorded in ``state_dir``."""
        self.state_dir = state_dir
        self._record_file = state_dir / RECORD_FILE
        self._state_file = state_dir / STATE_FILE

    def _record(self) -> processes.ProcessRecord | None:
        if not self._record_file.exists():
            return None
        return processes.ProcessRecord.from_json(json.loads(self._record_file.read_text()))

    def _state(self) -> dict[str, Any]:
        try:
            return dict(json.loads(self._state_file.read_text()))
        except (FileNotFoundError, json.JSONDecodeError):
            return {}

    def running(self) -> bool:
        """Whether the recorded runner process is alive."""
        record = self._record()
        return record is not None and processes.is_running(record)

    def agents(self) -> list[AgentEntry]:
        """The agent processes listed in the runner's state file."""
        return [AgentEntry.from_json(a) for a in self._state().get("agents") or []]

    def up(
        self,
        kubeconfig: Path,
        redis_url: str,
        log: Callable[[str], None],
        namespace: str | None = None,
    ) -> None:
        """Start the runner unless it runs; wait until it has listed the pods once."""
        if self.running():
            log("pod runner already running")
            return
        # Agents of a runner that died without cleaning up: nobody would ever stop them.
        self._stop_agents()
        self._state_file.unlink(missing_ok=True)
        argv = [
            sys.executable, "-m", "localcluster.podrunner",
            "--kubeconfig", str(kubeconfig),
            "--redis-url", redis_url,
            "--state-dir", str(self.state_dir),
            *(["--namespace", namespace] if namespace else []),
        ]  # fmt: skip
        hack = str(REPO_ROOT / "hack")
        pythonpath = os.pathsep.join(p for p in (hack, os.environ.get("PYTHONPATH")) if p)
        record = processes.start(
            "newfuse-podrunner",
            argv,
            self.state_dir / "logs" / "podrunner.log",
            {"PYTHONPATH": pythonpath},
        )
        self.state_dir.mkdir(parents=True, exist_ok=True)
        self._record_file.write_text(json.dumps(record.to_json()))

        def synced() -> bool:
            if not processes.is_running(record):
                raise RuntimeError(f"the pod runner exited; see {record.log}")
            state = self._state()
            return bool(state.get("runner_pid") == record.pid and state.get("synced"))

        wait_for(synced, 60, what="the pod runner's first pod list")
        log(f"pod runner running (pid {record.pid}), agents listed in {self._state_file}")

    def _stop_agents(self) -> bool:
        stopped = False
        for agent in self.agents():
            record = agent.record()
            # is_running compares the executable, so a recycled pid is never signalled.
            if processes.is_running(record):
                processes.stop(record, grace=5.0)
                stopped = True
        return stopped

    def down(self) -> bool:
        """Stop the runner (it stops its agents) and any agent it left. True if any was running."""
        record = self._record()
        stopped = False
        if record is not None and processes.is_running(record):
            processes.stop(record, grace=SHUTDOWN_GRACE_SECONDS + 10)
            stopped = True
        return self._stop_agents() or stopped

    def pids(self) -> list[int]:
        """The runner's PID and its agents' PIDs that are still running (for leak checks)."""
        record = self._record()
        pids = [record.pid] if record is not None and processes.is_running(record) else []
        return pids + [a.pid for a in self.agents() if processes.is_running(a.record())]


if __name__ == "__main__":
    sys.exit(main())
