"""Every benchmark `make bench` runs also runs here, once, at its tiny size; so does its summary.

Benchmarks are not tests, so nothing else exercised them: a broken one was only found by the next
`make bench`, long after the change that broke it. `make bench` runs bench/summary.py, which runs
each script of its BENCHES several times as a subprocess; here each runs once, the same way, with
NEWFUSE_BENCH_TINY=1, on the session's cluster, Redis and operator (see bench/environment.py), and
must exit 0 and print its figures. Tiny figures mean nothing and are not checked against any
target; that a benchmark measures what it says is reviewed, not tested. The summary itself runs
one cheap benchmark twice, to hold its table and record to what the benchmarks really print.
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
sys.path.insert(0, str(BENCH))  # bench/ is scripts, not a package

import summary  # noqa: E402
import targets  # noqa: E402

FIGURES_MARK = "BENCH-FIGURES"
# Per script; all of them together take about a minute on a 2-core machine.
TIMEOUT_SECONDS = 300


RUNNER = "summary"


def make_bench_scripts() -> list[str]:
    """The scripts the Makefile's `bench` target runs, in its order."""
    makefile = (REPO / "Makefile").read_text()
    recipe = re.search(r"^bench:.*\n((?:\t.*\n)+)", makefile, re.MULTILINE)
    assert recipe, "the Makefile has no bench target"
    return re.findall(r"bench/(\w+)\.py", recipe.group(1))


SCRIPTS = list(summary.BENCHES)


def test_make_bench_runs_the_summary_of_every_benchmark() -> None:
    assert make_bench_scripts() == [RUNNER], (
        "`make bench` runs bench/summary.py, which runs the rest"
    )
    runnable = {
        path.stem for path in BENCH.glob("*.py") if 'if __name__ == "__main__":' in path.read_text()
    }
    assert SCRIPTS, "no benchmark scripts found"
    assert set(SCRIPTS) == runnable - {RUNNER}, "every runnable bench/*.py must be in BENCHES"


def figures_of(stdout: str) -> dict[str, object]:
    """The benchmark's BENCH-FIGURES line, parsed."""
    lines = [line for line in stdout.splitlines() if line.startswith(f"{FIGURES_MARK} ")]
    assert len(lines) == 1, f"expected one {FIGURES_MARK} line, got {len(lines)}"
    figures: dict[str, object] = json.loads(lines[0].removeprefix(f"{FIGURES_MARK} "))
    return figures


def tiny_env(
    cluster: Cluster, redis_server: RedisHandle, operator: OperatorProcess
) -> dict[str, str]:
    """A benchmark's environment: tiny, on the session's cluster, Redis and operator."""
    if not cluster.is_local():
        pytest.skip("the benchmarks' pods are kwok pods: Ready without an image to pull")
    assert operator.proc is not None
    return {
        **os.environ,
        "NEWFUSE_BENCH_TINY": "1",
        "NEWFUSE_BENCH_KUBECONFIG": str(cluster.kubeconfig),
        "NEWFUSE_BENCH_REDIS_URL": redis_server.url,
        "NEWFUSE_BENCH_OPERATOR_PID": str(operator.proc.pid),
        "PYTHONPATH": str(REPO / "hack"),
        "COLUMNS": "160",
    }


def assert_no_leftovers(redis_client: redis.Redis, what: str) -> None:
    """On a shared Redis a benchmark removes what it wrote, and only that."""
    leftovers = [
        *redis_client.scan_iter(match="newfuse:\\{bench/*"),
        *redis_client.scan_iter(match="bench-dramatiq-*"),
    ]
    assert leftovers == [], f"{what} left keys in the session's Redis: {leftovers[:5]}"


@pytest.mark.parametrize("script", SCRIPTS)
def test_benchmark_runs_at_tiny_size(
    script: str,
    cluster: Cluster,
    redis_server: RedisHandle,
    operator: OperatorProcess,
    redis_client: redis.Redis,
) -> None:
    env = tiny_env(cluster, redis_server, operator)
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
    # The summary's rows name figures by their names here: a rename must not leave a row empty.
    rows = [row for row in targets.ROWS if row.bench == script and not row.full_size_only]
    named = {row.figure for row in rows} | {row.baseline for row in rows if row.baseline}
    missing = sorted(named - figures.keys())
    assert not missing, f"bench/targets.py names figures {script} does not print: {missing}"
    assert_no_leftovers(redis_client, script)


def test_summary_runs_judges_and_records(
    cluster: Cluster,
    redis_server: RedisHandle,
    operator: OperatorProcess,
    redis_client: redis.Redis,
    tmp_path: Path,
) -> None:
    # long_tasks: the cheapest at tiny size (seconds) and it has targets to judge.
    argv = ["--runs", "2", "--only", "long_tasks", "--results", str(tmp_path)]
    result = subprocess.run(
        [sys.executable, str(BENCH / f"{RUNNER}.py"), *argv],
        cwd=REPO,
        env=tiny_env(cluster, redis_server, operator),
        capture_output=True,
        text=True,
        timeout=TIMEOUT_SECONDS,
        check=False,
    )
    output = f"--- stdout\n{result.stdout[-6000:]}\n--- stderr\n{result.stderr[-6000:]}"
    assert result.returncode == 0, output
    assert "median of 2 runs" in result.stdout, output
    assert "duplicate executions" in result.stdout, output
    [path] = tmp_path.glob("*.json")
    record = json.loads(path.read_text())
    assert record["tiny"] is True
    assert record["runs_per_bench"] == 2
    assert list(record["benches"]) == ["long_tasks"]
    assert [run["exit_code"] for run in record["benches"]["long_tasks"]["runs"]] == [0, 0]
    assert record["verdicts"] == {"ok": 2, "MISS": 0, "absent": 0}, record["rows"]
    wall = next(row for row in record["rows"] if row["figure"] == "wall_s")
    assert len(wall["value"]["values"]) == 2
    assert wall["ratio"]["median"] > 0
    assert_no_leftovers(redis_client, RUNNER)
