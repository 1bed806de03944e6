"""The PID tracking behind `make cluster-down`: stop only what we started, and really stop it."""

from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path

from localcluster import processes


def test_start_track_and_stop(tmp_path: Path) -> None:
    sleep = shutil.which("sleep")
    assert sleep
    record = processes.start("sleeper", [sleep, "300"], tmp_path / "sleeper.log")
    assert processes.is_running(record)
    processes.stop(record, grace=5)
    assert not processes.is_running(record)


def test_a_recycled_pid_running_something_else_is_not_ours(tmp_path: Path) -> None:
    sleep = shutil.which("sleep")
    assert sleep
    record = processes.start("sleeper", [sleep, "300"], tmp_path / "sleeper.log")
    try:
        impostor = replace(record, executable="/usr/bin/not-what-we-started")
        assert not processes.is_running(impostor)
        processes.stop(impostor)  # must not signal the live process
        assert processes.is_running(record)
    finally:
        processes.stop(record, grace=5)


def test_process_ignoring_sigterm_is_killed(tmp_path: Path) -> None:
    bash = shutil.which("bash")
    assert bash
    record = processes.start(
        "stubborn", [bash, "-c", "trap '' TERM; sleep 300"], tmp_path / "s.log"
    )
    processes.stop(record, grace=0.5)
    assert not processes.is_running(record)


def test_round_trips_through_json(tmp_path: Path) -> None:
    record = processes.ProcessRecord("etcd", 42, "/bin/etcd", str(tmp_path / "etcd.log"))
    assert processes.ProcessRecord.from_json(record.to_json()) == record


def test_a_process_whose_binary_was_replaced_is_still_ours(tmp_path: Path) -> None:
    """A rebuilt cache replaces binaries under running processes; they must still be stoppable."""
    sleep = shutil.which("sleep")
    assert sleep
    copy = tmp_path / "sleep-copy"
    shutil.copy(sleep, copy)
    record = processes.start("sleeper", [str(copy), "300"], tmp_path / "s.log")
    copy.unlink()
    assert processes.is_running(record)
    processes.stop(record, grace=5)
    assert not processes.is_running(record)
