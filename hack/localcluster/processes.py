"""Start, track and stop the local control plane's processes by PID, and only those.

Each process gets its own session (so a Ctrl-C in the terminal that ran `make cluster-up` does not
take the cluster down) and is recorded with its executable path. Stopping checks that the PID
still runs that executable before signalling it, so a recycled PID is never killed by mistake.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ProcessRecord:
    """A process this tooling started: enough to find it again from another command."""

    name: str
    pid: int
    executable: str
    log: str

    def to_json(self) -> dict[str, Any]:
        """Serialise for the state file."""
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> ProcessRecord:
        """Read back from the state file."""
        return cls(str(data["name"]), int(data["pid"]), str(data["executable"]), str(data["log"]))


def start(
    name: str, argv: Sequence[str], log: Path, env: Mapping[str, str] | None = None
) -> ProcessRecord:
    """Start ``argv`` detached, with stdout and stderr appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        proc = subprocess.Popen(
            list(argv),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=None if env is None else {**os.environ, **env},
        )
    return ProcessRecord(name, proc.pid, os.path.realpath(argv[0]), str(log))


def _reap(pid: int) -> None:
    # A process started by this Python process stays a zombie until waited for, and a zombie
    # still answers kill(pid, 0); reap it so liveness checks see the truth.
    with contextlib.suppress(ChildProcessError, OSError):
        os.waitpid(pid, os.WNOHANG)


def is_running(record: ProcessRecord) -> bool:
    """Whether the recorded PID is alive and still runs the recorded executable."""
    _reap(record.pid)
    proc = Path(f"/proc/{record.pid}")
    try:
        state = (proc / "stat").read_text().rsplit(")", 1)[1].split()[0]
        executable = os.path.realpath(proc / "exe")
    except (FileNotFoundError, ProcessLookupError, IndexError, PermissionError):
        return False
    # A binary replaced since the process started (a rebuild of the cache) reads as
    # "<path> (deleted)"; it is still the process that was recorded.
    executable = executable.removesuffix(" (deleted)")
    return state != "Z" and executable == record.executable


def stop(record: ProcessRecord, grace: float = 10.0) -> None:
    """SIGTERM the process group, then SIGKILL it if it outlives ``grace`` seconds."""
    if not is_running(record):
        return
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(record.pid, sig)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not is_running(record):
                return
            time.sleep(0.05)
    if is_running(record):
        raise RuntimeError(f"{record.name} (pid {record.pid}) survived SIGKILL")
