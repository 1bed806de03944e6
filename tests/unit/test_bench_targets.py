"""`make bench`'s summary: medians, spreads, per-run ratios, verdicts, the table and the record.

The benchmarks themselves only run at full size by hand (and at a tiny size in
tests/integration/test_bench_tiny.py); the arithmetic that turns their runs into verdicts is pure
and is held here, so a lucky run, a baseline of 0 or a missing figure never turns into an "ok".
"""

from __future__ import annotations

import datetime as dt
import json
import sys
from pathlib import Path

import pytest
from rich.console import Console

BENCH = Path(__file__).resolve().parents[2] / "bench"
sys.path.insert(0, str(BENCH))  # bench/ is scripts, not a package

import summary  # noqa: E402
import targets  # noqa: E402
from targets import Row  # noqa: E402

RATIO = Row("b", "ours", "ours vs base", "tasks/s", baseline="base", op=">=", target=3.0,
            on_ratio=True)  # fmt: skip


def test_spread_is_median_low_high() -> None:
    assert targets.spread([3.0, 1.0, 2.0]) == targets.Spread(2.0, 1.0, 3.0, (3.0, 1.0, 2.0))
    assert targets.spread([1.0, 4.0]).median == 2.5
    with pytest.raises(ValueError, match="no values"):
        targets.spread([])


def test_ratio_is_taken_per_run_then_the_median() -> None:
    # Ratios 0.5, 5 and 1: their median is 1, the ratio of the medians (3 / 2) would be 1.5.
    runs = [{"ours": 1.0, "base": 2.0}, {"ours": 5.0, "base": 1.0}, {"ours": 3.0, "base": 3.0}]
    judged = targets.judge(RATIO, runs)
    assert judged.ratio is not None
    assert (judged.ratio.median, judged.ratio.low, judged.ratio.high) == (1.0, 0.5, 5.0)
    assert judged.value is not None
    assert judged.value.median == 3.0
    assert judged.baseline is not None
    assert judged.baseline.median == 2.0


def test_one_lucky_run_does_not_meet_the_target() -> None:
    runs = [
        {"ours": 35.0, "base": 10.0},
        {"ours": 20.0, "base": 10.0},
        {"ours": 25.0, "base": 10.0},
    ]
    assert targets.judge(RATIO, runs).verdict == "MISS"
    runs[1]["ours"] = 31.0
    assert targets.judge(RATIO, runs).verdict == "ok"


def test_a_run_without_a_baseline_is_not_divided_by_zero() -> None:
    runs = [{"ours": 30.0, "base": 0.0}, {"ours": 40.0, "base": 10.0}]
    judged = targets.judge(RATIO, runs)
    assert judged.ratio is not None
    assert judged.ratio.values == (4.0,)


@pytest.mark.parametrize(
    ("op", "value", "verdict"),
    [
        ("<=", 5.0, "ok"),
        ("<=", 5.1, "MISS"),
        (">=", 0.3, "ok"),
        ("==", 0.0, "ok"),
        ("==", 1.0, "MISS"),
    ],
)
def test_value_targets(op: targets.Op, value: float, verdict: str) -> None:
    limit = 0.0 if op == "==" else (5.0 if op == "<=" else 0.3)
    row = Row("b", "f", "f", op=op, target=limit)
    assert targets.judge(row, [{"f": value}]).verdict == verdict


def test_a_missing_figure_is_absent_never_ok() -> None:
    assert targets.judge(RATIO, [{"base": 1.0}]).verdict == "absent"
    assert targets.judge(Row("b", "f", "f"), [{"g": 1.0}]).verdict == "absent"
    assert targets.judge(Row("b", "f", "f"), [{"f": 1.0}]).verdict == ""
    full = Row("b", "f", "f", full_size_only=True)
    assert targets.judge(full, [{"g": 1.0}]).verdict == "absent"
    assert targets.judge(full, [{"g": 1.0}], tiny=True).verdict == ""


@pytest.mark.parametrize(
    ("count", "limit"),
    [(5, 150.0), (1_000, 150.0), (5_000, 250.0), (10_000, 250.0), (20_000, None)],
)
def test_a_scaled_target_picks_its_step(count: int, limit: float | None) -> None:
    [row] = [r for r in targets.ROWS if r.figure == "operator_peak_rss_mb"]
    judged = targets.judge(row, [{"count": count, "operator_peak_rss_mb": 200.0}])
    assert judged.limit == limit
    assert judged.verdict == {None: "", 150.0: "MISS", 250.0: "ok"}[limit]
    assert targets.target_text(judged) == (
        "none at this size" if limit is None else f"≤ {limit:.0f} MB"
    )


def test_rows_for_adds_unknown_figures_and_hides_sizes_and_derived_ones() -> None:
    runs = [{"count": 5, "newfuse_s": 1.0, "deployments_s": 2.0, "time_ratio": 0.5, "new_one": 7.0}]
    names = [row.figure for row in targets.rows_for("operator_scale", runs)]
    assert names == ["deployments_s", "newfuse_s", "operator_peak_rss_mb", "new_one"]
    memory = [{"recall_p50_ms": 1.0, "recall_p50_ms_min": 0.9, "recall_p50_ratio": 0.1}]
    assert "recall_p50_ms_min" not in [row.figure for row in targets.rows_for("memory", memory)]


def test_every_row_belongs_to_a_benchmark_and_its_baseline_has_a_row() -> None:
    assert {row.bench for row in targets.ROWS} == set(summary.BENCHES)
    shown = {(row.bench, row.figure) for row in targets.ROWS}
    for row in targets.ROWS:
        assert row.baseline is None or (row.bench, row.baseline) in shown, row
        assert not row.on_ratio or row.baseline, row


@pytest.mark.parametrize(
    ("value", "text"),
    [
        (0.0, "0"),
        (21.0, "21"),
        (1234.5, "1,234"),
        (0.03468, "0.035"),
        (3.02, "3.02"),
        (45.67, "45.7"),
    ],
)
def test_number(value: float, text: str) -> None:
    assert targets.number(value) == text


@pytest.mark.parametrize(
    ("value", "text"), [(3.0, "3.00"), (0.3, "0.300"), (0.0966, "0.097"), (14.02, "14.0")]
)
def test_ratios_keep_their_decimals(value: float, text: str) -> None:
    assert targets.number(value, ratio=True) == text


def test_table_cells() -> None:
    runs = [
        {"ours": 30.0, "base": 10.0},
        {"ours": 40.0, "base": 10.0},
        {"ours": 20.0, "base": 10.0},
    ]
    cells = targets.table_cells(targets.judge(RATIO, runs))
    assert cells == ["ours vs base", "30 tasks/s", "20-40", "10 tasks/s", "3.00 (2.00-4.00)",
                     "≥ 3.00x baseline", "ok"]  # fmt: skip


def test_parse_figures_reads_the_last_line_and_keeps_numbers_only() -> None:
    line = json.dumps({"bench": "b", "tiny": True, "x": 1, "y": 2.5})
    assert summary.parse_figures(f"noise\nBENCH-FIGURES {line}\n") == {"x": 1.0, "y": 2.5}
    assert summary.parse_figures("a table, then a traceback") is None


def session(tmp_path: Path) -> summary.Session:
    good = {"tasks": 8, "task_seconds": 3, "wall_s": 3.1, "ideal_s": 3.0, "tasks_per_s": 2.6}
    good |= {"duplicates": 0, "failed": 0, "reclaimed": 0}
    runs = [
        summary.Run("long_tasks", 1, 5.0, 0, good, tmp_path / "1.log"),
        summary.Run("long_tasks", 2, 5.0, 1, {**good, "duplicates": 2.0}, tmp_path / "2.log"),
        summary.Run("long_tasks", 3, 5.0, 0, {**good, "wall_s": 3.3}, tmp_path / "3.log"),
        summary.Run("long_tasks", 4, 1.0, 1, None, tmp_path / "4.log"),
    ]
    started = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
    return summary.Session(4, started, (0.0, 0.0, 0.0), {"long_tasks": runs})


def test_the_table_shows_medians_verdicts_and_failed_runs(tmp_path: Path) -> None:
    console = Console(record=True, width=200)
    console.print(summary.summary_table(session(tmp_path)))
    text = console.export_text()
    assert "long_tasks tasks 8, task_seconds 3; 3/4 runs" in text
    assert "2 failed" in text  # one crashed, one exited 1 after its figures
    wall = next(line for line in text.splitlines() if "NewFuse wall time" in line)
    assert "3.10 s" in wall
    assert "3.10-3.30" in wall
    assert "1.03 (1.03-1.10)" in wall
    duplicates = next(line for line in text.splitlines() if "duplicate executions" in line)
    assert "= 0" in duplicates
    assert "ok" in duplicates  # 2 in one run of 3: the median is 0


def test_the_record_keeps_raw_runs_and_verdicts(tmp_path: Path) -> None:
    record = summary.session_record(session(tmp_path))
    assert record["runs_per_bench"] == 4
    assert record["date"] == "2026-01-02T03:04:05+00:00"
    machine = record["machine"]
    assert isinstance(machine, dict)
    assert machine["cpus"]
    assert machine["python"]
    benches = record["benches"]
    assert isinstance(benches, dict)
    assert [run["exit_code"] for run in benches["long_tasks"]["runs"]] == [0, 1, 0, 1]
    rows = record["rows"]
    assert isinstance(rows, list)
    wall = next(row for row in rows if row["figure"] == "wall_s")
    assert wall["value"]["values"] == [3.1, 3.1, 3.3]
    assert wall["baseline_figure"] == "ideal_s"
    path = summary.write_record(
        record, tmp_path / "results", dt.datetime(2026, 1, 2, tzinfo=dt.UTC)
    )
    assert path.name.startswith("20260102T000000Z-")
    assert json.loads(path.read_text()) == json.loads(json.dumps(summary.rounded(record)))


def test_records_keep_four_significant_digits() -> None:
    data = {"a": [0.123456, 123456.7, 3], "b": (1.0, "x", None, True)}
    assert summary.rounded(data) == {"a": [0.1235, 123500.0, 3], "b": [1.0, "x", None, True]}
