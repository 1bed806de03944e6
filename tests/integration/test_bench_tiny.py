"""Every benchmark `make bench` runs also runs here, once, at its tiny size.

Benchmarks are not tests, so nothing else exercised them: a broken one was only found by the next
`make bench`, long after the change that broke it. Each runs as `make bench` runs it (a script, as
a subprocess) with NEWFUSE_BENCH_TINY=1, on the session's cluster, Redis and operator (see
bench/environment.py), and must exit 0 and print its figures. Tiny figures mean nothing and are
not checked against any target; that a benchmark measures what it says is reviewed, not tested.
"""

from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from harness import Cluster, OperatorProcess, RedisHandle

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "bench"
FIGURES_MARK = "BENCH-FIGURES"
# Per script; all of them together take about a minute on a 2-core machine.
TIMEOUT_SECONDS = 300


def make_bench_scripts() -> list[str]:
    """The scripts the Makefile's `bench` target runs, in its order."""
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^bench:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe, "the Makefile has no bench target"
    return re.findall(r"bench/(\w+)\.py", recipe.group(1))


SCRIPTS = make_bench_scripts()


def test_make_bench_runs_every_benchmark() -> None:
    runnable = {
        path.stem for path in BENCH.glob("*.py") if 'if __name__ == "__main__":' in path.read_text()
    }
    assert runnable, "no benchmark scripts found"
    assert set(SCRIPTS) == runnable, "every runnable bench/*.py must be in `make bench`"


def figures_of(stdout: str) -> dict[str, object]:
    """The benchmark's BENCH-FIGURES line, parsed."""
    lines = [line for line in stdout.splitlines() if line.startswith(f"{FIGURES_MARK} ")]
    assert len(lines) == 1, f"expected one {FIGURES_MARK} line, got {len(lines)}"
    figures: dict[str, object] = json.loads(lines[0].removeprefix(f"{FIGURES_MARK} "))
    return figures


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_at_tiny_size(
    script: str,
    cluster: Cluster,
    redis_server: RedisHandle,
    operator: OperatorProcess,
    redis_client: redis.Redis,
) -> None:
    if not cluster.is_local():
        pytest.skip("the benchmarks' pods are kwok pods: Ready without an image to pull")
    assert operator.proc is not None
    env = {
        **os.environ,
        "NEWFUSE_BENCH_TINY": "1",
        "NEWFUSE_BENCH_KUBECONFIG": str(cluster.kubeconfig),
        "NEWFUSE_BENCH_REDIS_URL": redis_server.url,
        "NEWFUSE_BENCH_OPERATOR_PID": str(operator.proc.pid),
        "PYTHONPATH": str(REPO / "hack"),
        "COLUMNS": "160",
    }
    started = time.monotonic()
    result = subprocess.run(
        [sys.executable, str(BENCH / f"{script}.py")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    elapsed = time.monotonic() - started
    output = f"--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"
    assert result.returncode == 0, (
        f"{script} exited {result.returncode} after {elapsed:.0f}s\n{output}"
    )
    figures = figures_of(result.stdout)
    assert figures.pop("bench") == script
    assert figures.pop("tiny") is True, "the benchmark ignored NEWFUSE_BENCH_TINY"
    assert figures, f"{script} printed no figures\n{output}"
    for name, value in figures.items():
        assert isinstance(value, int | float), (name, value)
        assert math.isfinite(value), (name, value)
    # On a shared Redis a benchmark removes what it wrote, and only that.
    leftovers = [
        *redis_client.scan_iter(match="newfuse:\\{bench/*"),
        *redis_client.scan_iter(match="bench-dramatiq-*"),
    ]
    assert leftovers == [], f"{script} left keys in the session's Redis: {leftovers[:5]}"
