"""checkov, an independent scanner of Kubernetes manifests, in a venv of its own under the cache.

Why a scanner from outside: our own tests check what we thought of; checkov checks what a platform
team's admission or CI scan will flag (resource limits, image pinning, secrets in env...). Every
check it fails on the chart or an agent pod must be fixed, or accepted with a reason in
hack/checkov-accepted.yaml (tests/unit/test_security_scan.py enforces that).

Why its own venv: installed into the project's venv, checkov's pins would downgrade kubernetes,
packaging, pytest and python-dateutil. hack/checkov-requirements.txt pins it and everything it
needs; the venv lives in $NEWFUSE_CACHE/tools/checkov-<version>, stamped with a hash of that
file, so a warm machine reuses it and a changed pin reinstalls it. uv (which the Makefile
bootstraps into the same tools directory) installs it; plain venv + pip when uv is missing.

`python hack/scanner.py` installs it if needed and prints CHECKOV_BIN=<path> (`make deps` runs it).
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REQUIREMENTS = ROOT / "hack" / "checkov-requirements.txt"
ACCEPTED = ROOT / "hack" / "checkov-accepted.yaml"


def cache_dir() -> Path:
    """Where the Makefile keeps its tools: $NEWFUSE_CACHE, else ~/.cache/newfuse."""
    return Path(os.environ.get("NEWFUSE_CACHE") or Path.home() / ".cache" / "newfuse")


def pinned_version(requirements: Path = REQUIREMENTS) -> str:
    """The checkov version hack/checkov-requirements.txt pins."""
    for line in requirements.read_text().splitlines():
        if line.startswith("checkov=="):
            return line.split("==", 1)[1].strip()
    raise ValueError(f"{requirements} pins no checkov")


def _uv(tools: Path) -> Path | None:
    """The uv the Makefile bootstrapped (the newest, if several), or one named by $UV."""
    if os.environ.get("UV"):
        return Path(os.environ["UV"])
    found = sorted(tools.glob("uv-*/bin/uv"))
    return found[-1] if found else None


def checkov_binary(requirements: Path = REQUIREMENTS) -> Path:
    """The pinned checkov, installed into its own venv on first use (a no-op when warm)."""
    tools = cache_dir() / "tools"
    home = tools / f"checkov-{pinned_version(requirements)}"
    stamp = hashlib.sha256(requirements.read_bytes()).hexdigest()[:16]
    binary = home / "bin" / "checkov"
    tools.mkdir(parents=True, exist_ok=True)
    # One installer at a time (two test sessions, or make deps beside a test run).
    with (tools / f".{home.name}.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        marker = home / ".stamp"
        if binary.exists() and marker.exists() and marker.read_text() == stamp:
            return binary
        shutil.rmtree(home, ignore_errors=True)
        uv = _uv(tools)
        python = home / "bin" / "python"
        if uv is not None:
            subprocess.run(
                [str(uv), "venv", "-q", "--python", sys.executable, str(home)], check=True
            )
            install = [str(uv), "pip", "install", "-q", "--python", str(python)]
        else:
            subprocess.run([sys.executable, "-m", "venv", str(home)], check=True)
            install = [str(python), "-m", "pip", "install", "-q"]
        subprocess.run([*install, "-r", str(requirements)], check=True)
        marker.write_text(stamp)
    return binary


@dataclass(frozen=True)
class Finding:
    """One failed check on one object of one scanned file."""

    check: str
    name: str
    resource: str
    file: str


@dataclass(frozen=True)
class Report:
    """What checkov said about each scanned file: its passed-check count and its failures."""

    passed: Counter[str]
    failed: tuple[Finding, ...]

    def failed_in(self, file: str) -> list[Finding]:
        """The failures of one scanned file (by its name)."""
        return [f for f in self.failed if f.file == file]


def scan(files: Sequence[Path]) -> Report:
    """Run checkov's Kubernetes checks on each of ``files``, one checkov run per file.

    One run per file, although checkov starts slowly: its graph checks (a pod without a
    NetworkPolicy, CKV2_K8S_6) match objects across every file of a run, so a policy of one
    rendering would hide the missing policy of another.
    """
    passed: Counter[str] = Counter()
    failed: list[Finding] = []
    for file in files:
        results = _run(file)
        passed[file.name] += len(results["passed_checks"])
        failed += (
            Finding(c["check_id"], c["check_name"], c["resource"], file.name)
            for c in results["failed_checks"]
        )
    return Report(passed, tuple(failed))


def _run(file: Path) -> dict[str, Any]:
    result = subprocess.run(
        [
            str(checkov_binary()), "--file", str(file),
            "--framework", "kubernetes",
            "--output", "json",
            # Offline: no guidelines or severities from the vendor's service.
            "--skip-download",
        ],
        capture_output=True, text=True, timeout=600, check=False, cwd=file.parent,
        env={**os.environ, "LOG_LEVEL": "ERROR"},
    )  # fmt: skip
    # checkov exits 1 when a check failed: that is the normal outcome, not an error.
    if result.returncode not in (0, 1):
        raise RuntimeError(f"checkov failed ({result.returncode}): {result.stderr[-2000:]}")
    report = json.loads(result.stdout)
    summary = report.get("summary", {})
    if summary.get("parsing_errors") or not summary.get("resource_count"):
        raise RuntimeError(f"checkov could not read {file.name}: {summary}")
    results: dict[str, Any] = report["results"]
    return results


if __name__ == "__main__":
    print(f"CHECKOV_BIN={checkov_binary().parent}")
