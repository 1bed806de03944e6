"""One pod's agent process, supervised the way the kubelet supervises a container.

Starting, restarting with back-off and stopping (SIGTERM, then SIGKILL after the grace period)
need their own thread and locking per pod; kept apart from the watch loop, the runner only has to
decide which pods get a PodProcess. AgentEntry is what a live process looks like in the state file.
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Final

from localcluster import processes
from localcluster.netutil import free_port
from localcluster.podenv import HTTP_ADDRESS_VAR, HTTP_PORT_VAR, LOCAL_POD_IP, expand

# The runner's modules share one logger, so its log reads as one program's.
log = logging.getLogger("podrunner")

# restartPolicy Always, with the kubelet's doubling back-off (shorter, for a dev loop), reset once
# a process has run for a while so a crash a day later does not wait the maximum.
BACKOFF_INITIAL_SECONDS: Final = 1.0
BACKOFF_MAX_SECONDS: Final = 30.0
BACKOFF_RESET_AFTER_SECONDS: Final = 600.0


class AgentState(StrEnum):
    """What an agent process listed in the state file is doing."""

    RUNNING = "Running"
    TERMINATING = "Terminating"


@dataclass(frozen=True)
class AgentEntry:
    """One agent process as listed in the state file."""

    namespace: str
    pod: str
    uid: str
    pid: int
    executable: str
    http_port: int
    restarts: int
    state: AgentState
    log: str

    def to_json(self) -> dict[str, Any]:
        """Serialise for the state file."""
        return {**asdict(self), "state": str(self.state)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> AgentEntry:
        """Read back from the state file."""
        return cls(
            namespace=str(data["namespace"]),
            pod=str(data["pod"]),
            uid=str(data["uid"]),
            pid=int(data["pid"]),
            executable=str(data["executable"]),
            http_port=int(data["http_port"]),
            restarts=int(data["restarts"]),
            state=AgentState(data["state"]),
            log=str(data["log"]),
        )

    def record(self) -> processes.ProcessRecord:
        """The process record, for PID-recycling-safe liveness checks and stopping."""
        return processes.ProcessRecord(
            f"agent {self.namespace}/{self.pod}", self.pid, self.executable, self.log
        )


@dataclass(frozen=True)
class AgentSpec:
    """Everything needed to (re)start one pod's agent container here."""

    namespace: str
    pod: str
    uid: str
    argv: tuple[str, ...]
    env: Mapping[str, str]
    grace_seconds: float
    log_path: Path
    tmp_dir: Path


class PodProcess:
    """The agent process of one pod, supervised by its own thread like a kubelet container."""

    def __init__(
        self,
        spec: AgentSpec,
        on_change: Callable[[], None],
        on_finished: Callable[[PodProcess], None],
    ) -> None:
        """Prepare (but do not start) the supervisor of ``spec``."""
        self.spec = spec
        self._on_change = on_change
        self._on_finished = on_finished
        self._lock = threading.Lock()
        self._deleting = threading.Event()
        self._done = threading.Event()
        self._proc: subprocess.Popen[bytes] | None = None
        self._executable = ""
        self._port = 0
        self._restarts = 0
        self._kill_deadline = float("inf")
        self._thread = threading.Thread(
            target=self._run, name=f"pod {spec.namespace}/{spec.pod}", daemon=True
        )

    def start(self) -> None:
        """Start supervising (the first process starts right away)."""
        self._thread.start()

    def snapshot(self) -> AgentEntry | None:
        """The state-file entry, or None while no process is alive (back-off, finished)."""
        with self._lock:
            proc = self._proc
            if proc is None or proc.returncode is not None:
                return None
            return AgentEntry(
                namespace=self.spec.namespace,
                pod=self.spec.pod,
                uid=self.spec.uid,
                pid=proc.pid,
                executable=self._executable,
                http_port=self._port,
                restarts=self._restarts,
                state=AgentState.TERMINATING if self._deleting.is_set() else AgentState.RUNNING,
                log=str(self.spec.log_path),
            )

    def terminate(self, grace_seconds: float | None = None) -> None:
        """Stop for good: SIGTERM now, SIGKILL after the grace period. Never blocks.

        Called again (every later watch event of a deleted pod), it only ever brings the SIGKILL
        forward, as a shorter grace period from the runner's own shutdown does.
        """
        grace = self.spec.grace_seconds if grace_seconds is None else grace_seconds
        deadline = time.monotonic() + grace
        with self._lock:
            first = not self._deleting.is_set()
            self._deleting.set()
            proc = self._proc
            if proc is None or deadline >= self._kill_deadline:
                return
            self._kill_deadline = deadline
            if first:
                log.info(
                    "%s/%s: stopping pid %d (grace %gs)",
                    self.spec.namespace,
                    self.spec.pod,
                    proc.pid,
                    grace,
                )
                self._signal(proc, signal.SIGTERM)
        if first:
            self._on_change()
        timer = threading.Timer(grace, self._kill, args=(proc,))
        timer.daemon = True
        timer.start()

    def wait(self, timeout: float) -> bool:
        """Wait until supervision ended (process gone, no restart coming). True if it did."""
        return self._done.wait(timeout)

    @staticmethod
    def _signal(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
        # The agent leads its own process group (start_new_session), so anything it forked is
        # signalled too; a reaped leader means the pid may be recycled, so leave it alone.
        if proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)

    def _kill(self, proc: subprocess.Popen[bytes]) -> None:
        if proc.poll() is None:
            log.warning(
                "%s/%s: pid %d outlived its grace period; SIGKILL",
                self.spec.namespace,
                self.spec.pod,
                proc.pid,
            )
            self._signal(proc, signal.SIGKILL)

    def _spawn(self) -> subprocess.Popen[bytes] | None:
        port = free_port()
        env = dict(self.spec.env)
        env[HTTP_PORT_VAR] = str(port)
        env[HTTP_ADDRESS_VAR] = LOCAL_POD_IP
        argv = [expand(a, env) for a in self.spec.argv]
        self.spec.log_path.parent.mkdir(parents=True, exist_ok=True)
        with self.spec.log_path.open("ab") as out:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S")
            out.write(f"--- {stamp} podrunner: start #{self._restarts}: {argv}\n".encode())
            out.flush()
            try:
                proc = subprocess.Popen(
                    argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    env=env,
                    start_new_session=True,
                )
            except OSError as exc:
                out.write(f"--- podrunner: cannot start: {exc}\n".encode())
                log.error(
                    "%s/%s: cannot start %s: %s", self.spec.namespace, self.spec.pod, argv, exc
                )
                return None
        # Popen returns after exec succeeded, so /proc already shows the real executable (the
        # interpreter, for a script): what the recycling-safe liveness checks compare against.
        try:
            self._executable = os.path.realpath(f"/proc/{proc.pid}/exe")
        except OSError:
            self._executable = ""
        self._port = port
        log.info(
            "%s/%s: started pid %d on port %d (restarts %d)",
            self.spec.namespace,
            self.spec.pod,
            proc.pid,
            port,
            self._restarts,
        )
        return proc

    def _run(self) -> None:
        backoff = BACKOFF_INITIAL_SECONDS
        try:
            self.spec.tmp_dir.mkdir(parents=True, exist_ok=True)
            while True:
                with self._lock:
                    if self._deleting.is_set():
                        return
                    self._proc = proc = self._spawn()
                self._on_change()
                started = time.monotonic()
                if proc is not None:
                    code = proc.wait()
                    log.log(
                        logging.INFO if self._deleting.is_set() else logging.WARNING,
                        "%s/%s: pid %d exited with %d",
                        self.spec.namespace,
                        self.spec.pod,
                        proc.pid,
                        code,
                    )
                with self._lock:
                    self._proc = None
                self._on_change()
                if time.monotonic() - started >= BACKOFF_RESET_AFTER_SECONDS:
                    backoff = BACKOFF_INITIAL_SECONDS
                if self._deleting.wait(backoff):
                    return
                backoff = min(backoff * 2, BACKOFF_MAX_SECONDS)
                with self._lock:
                    self._restarts += 1
        except Exception:
            log.exception("%s/%s: supervisor failed", self.spec.namespace, self.spec.pod)
        finally:
            # The pod's /tmp is an emptyDir: it goes with the pod.
            shutil.rmtree(self.spec.tmp_dir, ignore_errors=True)
            self._done.set()
            self._on_finished(self)
