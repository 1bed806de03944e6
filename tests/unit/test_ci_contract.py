"""The README's test command is exactly what CI runs, and a run with no tests is a failure."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_ci_runs_the_readme_test_command() -> None:
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert re.search(r"^make test\b", readme, re.MULTILINE), "README must show `make test`"
    assert re.search(r"^make test$", ci, re.MULTILINE), ".ci/run must run exactly `make test`"


def test_no_collected_tests_fails_the_run() -> None:
    result = subprocess.run(
        [
            str(ROOT / "hack" / "pytest.sh"),
            "-m",
            "unit",
            "-k",
            "no_test_has_this_name_zz",
            "-p",
            "no:cacheprovider",
        ],
        cwd=ROOT,
        env={"PYTHON": sys.executable, "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 1, result.stdout + result.stderr
    assert "collected no tests" in result.stderr
