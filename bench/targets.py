"""What `make bench`'s summary judges: each figure's baseline and target, and the arithmetic.

One benchmark run can be lucky (or unlucky: the machine has 2 cores, shared), so the summary
(bench/summary.py) runs each benchmark several times and judges the median, showing the spread
beside it. A figure with a baseline is also divided by that baseline within each run (both were
measured on the same machine at the same moment) and the ratios' median and spread are shown:
that ratio is the figure that travels between machines.

The targets live here, in ROWS, as data: the issue's (18) for task throughput and the operator,
and for the others whatever the benchmark itself prints as its target. A benchmark's figure that
no row names still gets a plain row, so a new figure is never silently dropped. Pure functions
only: no I/O, so tests/unit/test_bench_targets.py checks all of it.
"""

from __future__ import annotations

import statistics
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

Op = Literal["<=", ">=", "=="]
Verdict = Literal["ok", "MISS", "absent", ""]
Runs = Sequence[Mapping[str, float]]


@dataclass(frozen=True)
class Row:
    """One line of the summary: a figure, what it is compared with, and what it must reach.

    ``target`` judges the median ratio to ``baseline`` when ``on_ratio``, else the median value.
    ``scaled``: a target that depends on the size, as (size figure, ((up to size, limit), ...)):
    the first step whose size is at least the run's applies; beyond the last, no target.
    ``full_size_only``: a figure the benchmark measures at full size only (not `absent` if tiny).
    """

    bench: str
    figure: str
    label: str
    unit: str = ""
    baseline: str | None = None
    op: Op | None = None
    target: float | None = None
    on_ratio: bool = False
    scaled: tuple[str, tuple[tuple[float, float], ...]] | None = None
    full_size_only: bool = False


OS, TT, RS, LT, FA, ME = (
    "operator_scale",
    "task_throughput",
    "rollout_steps",
    "long_tasks",
    "fleet_api",
    "memory",
)
BENCHES = (OS, TT, RS, LT, FA, ME)
ROWS: tuple[Row, ...] = (
    Row(OS, "deployments_s", "Deployments to Available (baseline)", "s"),
    Row(OS, "newfuse_s", "NewFuseAgents to Available", "s", baseline="deployments_s",
        op="<=", target=1.0, on_ratio=True),
    Row(OS, "operator_peak_rss_mb", "operator peak RSS", "MB", op="<=",
        scaled=("count", ((1_000, 150.0), (10_000, 250.0)))),
    Row(TT, "raw_per_s", "raw redis-py pipeline (ceiling)", "tasks/s"),
    Row(TT, "dramatiq_per_s", "Dramatiq (baseline)", "tasks/s"),
    Row(TT, "newfuse_per_s", "NewFuse agents vs Dramatiq", "tasks/s", baseline="dramatiq_per_s",
        op=">=", target=3.0, on_ratio=True),
    Row(TT, "newfuse_per_s", "NewFuse agents vs raw ceiling", "tasks/s", baseline="raw_per_s",
        op=">=", target=0.30, on_ratio=True),
    Row(TT, "latency_p50_ms", "latency p50 at 500/s", "ms"),
    Row(TT, "latency_p99_ms", "latency p99 at 500/s", "ms", op="<=", target=5.0),
    Row(TT, "latency_at_2000_p50_ms", "latency p50 at 2,000/s", "ms", full_size_only=True),
    Row(TT, "latency_at_2000_p99_ms", "latency p99 at 2,000/s", "ms", full_size_only=True),
    Row(RS, "deployment_median_s", "Deployment step median (baseline)", "s"),
    Row(RS, "newfuse_median_s", "NewFuse step median", "s", baseline="deployment_median_s",
        op="<=", target=1.0),
    Row(RS, "deployment_p95_s", "Deployment step p95 (baseline)", "s"),
    Row(RS, "newfuse_p95_s", "NewFuse step p95", "s", baseline="deployment_p95_s"),
    Row(LT, "ideal_s", "ideal schedule (baseline)", "s"),
    Row(LT, "wall_s", "NewFuse wall time", "s", baseline="ideal_s"),
    Row(LT, "tasks_per_s", "NewFuse tasks/s", "tasks/s"),
    Row(LT, "duplicates", "duplicate executions", op="==", target=0.0),
    Row(LT, "failed", "failed results", op="==", target=0.0),
    Row(LT, "reclaimed", "tasks reclaimed"),
    Row(FA, "direct_p50_ms", "direct client p50 (baseline)", "ms"),
    Row(FA, "gateway_p50_ms", "gateway p50", "ms", baseline="direct_p50_ms"),
    Row(FA, "direct_p99_ms", "direct client p99 (baseline)", "ms"),
    Row(FA, "gateway_p99_ms", "gateway p99", "ms", baseline="direct_p99_ms"),
    Row(FA, "direct_per_s", "direct client (baseline)", "tasks/s"),
    Row(FA, "gateway_per_s", "gateway", "tasks/s", baseline="direct_per_s"),
    Row(FA, "fanout10_p99_ms", "live feed p99, 10 subscribers (baseline)", "ms"),
    Row(FA, "fanout_p99_ms", "live feed p99, all subscribers", "ms", baseline="fanout10_p99_ms"),
    Row(FA, "fanout_last_ms", "live feed, last subscriber", "ms", baseline="fanout10_p99_ms"),
    Row(ME, "exact_p50_ms", "exact k-NN p50 (baseline)", "ms"),
    Row(ME, "recall_p50_ms", "RedisMemory.recall p50", "ms", baseline="exact_p50_ms"),
    Row(ME, "exact_p99_ms", "exact k-NN p99 (baseline)", "ms"),
    Row(ME, "recall_p99_ms", "RedisMemory.recall p99", "ms", baseline="exact_p99_ms"),
    Row(ME, "graph_p50_ms", "HNSW graph alone p50", "ms", baseline="exact_p50_ms"),
    Row(ME, "graph_p99_ms", "HNSW graph alone p99", "ms", baseline="exact_p99_ms"),
    Row(ME, "recall_at_10", "recall@10 against exact k-NN"),
    Row(ME, "encode_per_s", "Embedder.encode alone (baseline)", "/s"),
    Row(ME, "ingest_per_s", "FleetMemory.remember_many", "/s", baseline="encode_per_s"),
    Row(ME, "graph_build_s", "a reader's first recall (builds its graph)", "s"),
    Row(ME, "redis_bytes_per_memory", "Redis used_memory growth per memory", "B"),
    Row(ME, "redis_vector_bytes_per_memory", "Redis vectors hash per memory", "B"),
    Row(ME, "hnsw_bytes_per_memory", "HNSW graph per memory, serialised", "B"),
    Row(ME, "reader_rss_bytes_per_memory", "reader RSS growth per memory", "B"),
)  # fmt: skip

# The run's size: shown in the benchmark's heading, not as rows.
SIZES: dict[str, tuple[str, ...]] = {
    OS: ("count",),
    TT: ("tasks", "latency_tasks"),
    RS: ("replicas",),
    LT: ("tasks", "task_seconds"),
    FA: ("fanout_subscribers",),
    ME: ("vectors", "queries", "repeats"),
}
# Ratios a benchmark prints that a row's ratio column already shows; the memory benchmark's own
# min/max (this summary takes its own over the runs).
DERIVED = frozenset(
    {"time_ratio", "newfuse_ratio_to_dramatiq", "newfuse_share_of_raw", "median_ratio"}
    | {"ratio_to_ideal"}
    | {"gateway_ratio_to_direct", "ingest_ratio"}
    | {f"{w}_{q}_ratio" for w in ("recall", "graph") for q in ("p50", "p99")}
)
NOT_FIGURES = frozenset({"bench", "tiny"})


@dataclass(frozen=True)
class Spread:
    """The median of some runs, with the lowest and highest."""

    median: float
    low: float
    high: float
    values: tuple[float, ...]


@dataclass(frozen=True)
class Judged:
    """A row evaluated over the runs."""

    row: Row
    value: Spread | None  # None: no run reported the figure
    baseline: Spread | None
    ratio: Spread | None
    limit: float | None
    verdict: Verdict


def spread(values: Sequence[float]) -> Spread:
    """Median, lowest and highest of ``values`` (at least one)."""
    if not values:
        raise ValueError("no values")
    return Spread(statistics.median(values), min(values), max(values), tuple(values))


def limit_of(row: Row, runs: Runs) -> float | None:
    """The row's target for these runs' size (a scaled target picks its step)."""
    if row.scaled is None:
        return row.target
    figure, steps = row.scaled
    sizes = [run[figure] for run in runs if figure in run]
    if not sizes:
        return None
    size = max(sizes)
    return next((limit for upto, limit in steps if size <= upto), None)


def meets(value: float, op: Op, limit: float) -> bool:
    """Whether ``value`` reaches ``limit`` by ``op``."""
    if op == "<=":
        return value <= limit
    if op == ">=":
        return value >= limit
    return value == limit


def judge(row: Row, runs: Runs, *, tiny: bool = False) -> Judged:
    """The row's median, spread, ratio to its baseline (per run, then the median) and verdict."""
    present = [run for run in runs if row.figure in run]
    value = spread([run[row.figure] for run in present]) if present else None
    baseline = ratio = None
    if row.baseline is not None:
        paired = [run for run in present if run.get(row.baseline)]
        if paired:
            baseline = spread([run[row.baseline] for run in paired])
            ratio = spread([run[row.figure] / run[row.baseline] for run in paired])
    limit = limit_of(row, runs)
    judged = ratio if row.on_ratio else value
    verdict: Verdict = ""
    if value is None and row.full_size_only and tiny:
        verdict = ""
    elif value is None or judged is None:
        verdict = "absent"  # a figure the summary expects and no run reported
    elif row.op is not None and limit is not None:
        verdict = "ok" if meets(judged.median, row.op, limit) else "MISS"
    return Judged(row, value, baseline, ratio, limit, verdict)


def rows_for(bench: str, runs: Runs) -> list[Row]:
    """ROWS of ``bench``, then a plain row for every other figure its runs reported."""
    known = [row for row in ROWS if row.bench == bench]
    named = {row.figure for row in known} | {r.baseline for r in known if r.baseline}
    skip = named | DERIVED | NOT_FIGURES | set(SIZES.get(bench, ()))
    extra = sorted({name for run in runs for name in run} - skip)
    extra = [n for n in extra if not n.endswith(("_min", "_max")) or n[:-4] not in named]
    return known + [Row(bench, name, name) for name in extra]


def judge_bench(bench: str, runs: Runs, *, tiny: bool = False) -> list[Judged]:
    """Every row of one benchmark over its runs (``tiny``: runs at smoke sizes)."""
    return [judge(row, runs, tiny=tiny) for row in rows_for(bench, runs)]


def sizes_of(bench: str, runs: Runs) -> dict[str, float]:
    """The benchmark's size figures (the first run's: every run has the same size)."""
    first = runs[0] if runs else {}
    return {name: first[name] for name in SIZES.get(bench, ()) if name in first}


def number(value: float, *, ratio: bool = False) -> str:
    """A figure as people read it: three significant digits or so, counts without decimals.

    A ratio keeps its decimals even when round (3.00x, 0.300x), so a column of them lines up.
    """
    size = abs(value)
    if ratio:
        return f"{value:.1f}" if size >= 10 else f"{value:.2f}" if size >= 1 else f"{value:.3f}"
    if value == int(value) and size < 1e15:
        return f"{int(value):,}"
    if size >= 100:
        return f"{value:,.0f}"
    if size >= 10:
        return f"{value:.1f}"
    if size >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def spread_text(value: Spread | None, suffix: str = "", *, ratio: bool = False) -> tuple[str, str]:
    """(median, "low-high") as text; the range is empty for a single run."""
    if value is None:
        return "—", ""
    median = number(value.median, ratio=ratio) + suffix
    if len(value.values) < 2:
        return median, ""
    return median, f"{number(value.low, ratio=ratio)}-{number(value.high, ratio=ratio)}"


def target_text(judged: Judged) -> str:
    """The target as people read it, e.g. ">= 3x baseline" or "≤ 150 MB"."""
    row = judged.row
    if row.op is None or judged.limit is None:
        return "" if row.scaled is None else "none at this size"
    sign = {"<=": "≤", ">=": "≥", "==": "="}[row.op]
    if row.on_ratio:
        return f"{sign} {number(judged.limit, ratio=True)}x baseline"
    unit = f" {row.unit}" if row.unit else ""
    return f"{sign} {number(judged.limit)}{unit}"


def table_cells(judged: Judged) -> list[str]:
    """One summary row's text: label, median, spread, baseline, ratio (spread), target, verdict."""
    row = judged.row
    unit = f" {row.unit}" if row.unit else ""
    median, between = spread_text(judged.value, unit)
    baseline = number(judged.baseline.median) + unit if judged.baseline else ""
    ratio, ratio_between = spread_text(judged.ratio, ratio=True)
    if judged.ratio is None:
        ratio = ""
    elif ratio_between:
        ratio = f"{ratio} ({ratio_between})"
    return [row.label, median, between, baseline, ratio, target_text(judged), judged.verdict]


def record(judged: Judged) -> dict[str, object]:
    """One row for the JSON record."""
    row = judged.row

    def plain(value: Spread | None) -> dict[str, object] | None:
        if value is None:
            return None
        return {"median": value.median, "min": value.low, "max": value.high,
                "values": list(value.values)}  # fmt: skip

    return {
        "bench": row.bench,
        "figure": row.figure,
        "label": row.label,
        "unit": row.unit,
        "value": plain(judged.value),
        "baseline_figure": row.baseline,
        "baseline": plain(judged.baseline),
        "ratio": plain(judged.ratio),
        "target": None if row.op is None or judged.limit is None else {
            "op": row.op, "limit": judged.limit, "on": "ratio" if row.on_ratio else "value"},
        "verdict": judged.verdict,
    }  # fmt: skip
