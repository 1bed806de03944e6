"""`make bench`: every benchmark, several times, then one table of medians and a JSON record.

One run of a benchmark on this 2-core machine can be lucky or unlucky by tens of percent, so a
figure quoted from a single run cannot stand. This runs each benchmark script ``--runs`` times
(default 3) as a subprocess, exactly as it runs alone (its output goes to a log file under
`.local/bench/logs/`), reads the `BENCH-FIGURES` line it ends with, and prints one table: every
figure's median with its spread (min-max), its same-run baseline and the ratio to it, its target
and whether the median meets it (targets and baselines: bench/targets.py). The record it writes
(`bench/results/<UTC time>-<git sha>.json`, or `.local/bench/results/` for tiny sizes, which mean
nothing) keeps the machine, the commit, every run's raw figures and the verdicts, so runs on
different days or commits can be compared.

A missed target is shown (MISS) but does not fail `make bench`: on a shared 2-core machine a
target can miss for reasons that are not the code's (`--strict` makes misses fail). A run that
crashes, or ends without its figures, fails it, after every other run has been done.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from rich.console import Console
from rich.progress import Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

import targets
from environment import FIGURES_MARK, STATE_ROOT, tiny

console = Console()
HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# In the order `make bench` has always run them: the cluster benchmarks first.
BENCHES = targets.BENCHES
# The memory benchmark repeats its timed parts itself (3 by default); here the runs are the
# repeats, and its graph build and footprint get measured once per run instead of once.
EXTRA_ARGS: dict[str, tuple[str, ...]] = {"memory": ("--repeats", "1")}
VERDICT_STYLE = {"ok": "green", "MISS": "bold red", "absent": "yellow"}


@dataclass
class Run:
    """One run of one benchmark script."""

    bench: str
    number: int
    seconds: float
    exit_code: int
    figures: dict[str, float] | None
    log: Path

    @property
    def failed(self) -> bool:
        """A crash, or no figures line: nothing of this run can be judged."""
        return self.exit_code != 0 or self.figures is None


@dataclass
class Session:
    """Everything one `make bench` measured."""

    runs_per_bench: int
    started: dt.datetime
    load_before: tuple[float, float, float]
    runs: dict[str, list[Run]] = field(default_factory=dict)


def parse_figures(output: str) -> dict[str, float] | None:
    """The numbers of the last `BENCH-FIGURES {json}` line of ``output``, or None without one."""
    lines = [line for line in output.splitlines() if line.startswith(f"{FIGURES_MARK} ")]
    if not lines:
        return None
    data = json.loads(lines[-1].removeprefix(f"{FIGURES_MARK} "))
    return {
        key: float(value)
        for key, value in data.items()
        if isinstance(value, int | float) and not isinstance(value, bool)
    }


def run_once(bench: str, number: int, total: int, logs: Path, *, verbose: bool) -> Run:
    """Run one benchmark script to its end, its output to a log (and the screen if verbose)."""
    logs.mkdir(parents=True, exist_ok=True)
    log = logs / f"{bench}-{number}.log"
    argv = [sys.executable, str(HERE / f"{bench}.py"), *EXTRA_ARGS.get(bench, ())]
    env = {**os.environ, "COLUMNS": "160", "PYTHONUNBUFFERED": "1"}
    started = time.monotonic()
    # A live line only on a terminal: in a log (CI, `| tee`) it would leave a blank line a run.
    progress = Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        TimeElapsedColumn(),
        console=console,
        transient=True,
        disable=not console.is_terminal,
    )
    what = f"{bench} run {number}/{total}"
    if progress.disable:
        console.print(f"… {what} (log: {log})")
    with progress, log.open("w") as sink:
        progress.add_task(what)
        child = subprocess.Popen(
            argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        assert child.stdout is not None
        for line in child.stdout:
            sink.write(line)
            if verbose:
                progress.console.print(Text(line.rstrip("\n"), style="dim"))
        exit_code = child.wait()
    seconds = time.monotonic() - started
    return Run(bench, number, seconds, exit_code, parse_figures(log.read_text()), log)


def report_run(run: Run, total: int) -> None:
    """One line per finished run: how long, and the figures that have a target."""
    where = f"{run.bench} run {run.number}/{total} ({run.seconds:.0f} s)"
    if run.failed:
        why = "no figures line" if run.exit_code == 0 else f"exit {run.exit_code}"
        console.print(f"[bold red]✗ {where}: {why}; see {run.log}")
        if run.figures is None:
            return
    shown = []
    for judged in targets.judge_bench(run.bench, [run.figures or {}], tiny=tiny()):
        if judged.verdict in ("ok", "MISS"):
            cells = targets.table_cells(judged)
            value = cells[4] if judged.row.on_ratio else cells[1]
            shown.append(
                f"{judged.row.label} {value} [{VERDICT_STYLE[judged.verdict]}]{judged.verdict}[/]"
            )
    mark = "[red]✗" if run.failed else "[green]✓"
    console.print(f"{mark} {where}[/]: " + ("; ".join(shown) or "done"))


def judged_runs(runs: Sequence[Run]) -> list[dict[str, float]]:
    """The figures of the runs that printed them.

    The figures line comes last, so a run that printed it measured everything; one that then
    exits 1 (long_tasks on a duplicate execution) is judged too, or its MISS would be hidden.
    """
    return [run.figures for run in runs if run.figures is not None]


def summary_table(session: Session) -> Table:
    """The one table: a heading row per benchmark (its size, its runs), then its figures."""
    n = session.runs_per_bench
    title = f"make bench: median of {n} run{'s' if n > 1 else ''} (min-max)"
    if tiny():
        title += " [yellow]at TINY sizes: the figures mean nothing"
    table = Table(title=title, title_justify="left")
    for column in ("figure", "median", "min-max", "baseline", "ratio (min-max)"):
        table.add_column(column, justify="left" if column == "figure" else "right")
    table.add_column("target")
    table.add_column("verdict")
    for bench, runs in session.runs.items():
        good = judged_runs(runs)
        failed = sum(run.failed for run in runs)
        sizes = ", ".join(
            f"{k} {targets.number(v)}" for k, v in targets.sizes_of(bench, good).items()
        )
        heading = f"[bold]{bench}[/] {sizes}; {len(good)}/{len(runs)} runs"
        rows = targets.judge_bench(bench, good, tiny=tiny()) if good else []
        verdict = f"[red]{failed} failed" if failed else ""
        table.add_row(heading, *[""] * 5, verdict, end_section=not rows)
        for index, judged in enumerate(rows):
            cells = targets.table_cells(judged)
            if cells[-1]:
                cells[-1] = f"[{VERDICT_STYLE[cells[-1]]}]{cells[-1]}[/]"
            cells[0] = f"  {cells[0]}"
            table.add_row(*cells, end_section=index == len(rows) - 1)
    return table


def git(*args: str) -> str:
    """A git command's output in the repository, or "" without git."""
    try:
        done = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, check=True)
    except (OSError, subprocess.CalledProcessError):
        return ""
    return done.stdout.strip()


def session_record(session: Session) -> dict[str, object]:
    """The JSON record: machine, commit, every run's raw figures, every row's verdict."""
    rows: list[dict[str, object]] = []
    benches: dict[str, object] = {}
    for bench, runs in session.runs.items():
        good = judged_runs(runs)
        judged = targets.judge_bench(bench, good, tiny=tiny()) if good else []
        rows.extend(targets.record(j) for j in judged)
        benches[bench] = {
            "sizes": targets.sizes_of(bench, good),
            "runs": [
                {
                    "run": r.number,
                    "seconds": round(r.seconds, 1),
                    "exit_code": r.exit_code,
                    "figures": r.figures,
                }
                for r in runs
            ],
        }
    verdicts = [str(row["verdict"]) for row in rows]
    return {
        "schema": 1,
        "date": session.started.isoformat(timespec="seconds"),
        "git": {"sha": git("rev-parse", "HEAD"), "dirty": bool(git("status", "--porcelain"))},
        "machine": {
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "load_before": session.load_before,
            "load_after": os.getloadavg(),
        },
        "tiny": tiny(),
        "runs_per_bench": session.runs_per_bench,
        "seconds": round((dt.datetime.now(dt.UTC) - session.started).total_seconds(), 1),
        "verdicts": {v: verdicts.count(v) for v in ("ok", "MISS", "absent")},
        "benches": benches,
        "rows": rows,
    }


def write_record(record: dict[str, object], directory: Path, started: dt.datetime) -> Path:
    """``directory``/<UTC time>-<short sha>.json."""
    directory.mkdir(parents=True, exist_ok=True)
    sha = git("rev-parse", "--short", "HEAD") or "nogit"
    path = directory / f"{started:%Y%m%dT%H%M%SZ}-{sha}.json"
    path.write_text(json.dumps(rounded(record), indent=1) + "\n")
    return path


def rounded(data: object) -> object:
    """``data`` with every float cut to 4 significant digits (no benchmark here is steadier).

    Records are committed, so they are kept small; the digits cut are noise.
    """
    if isinstance(data, float):
        return float(f"{data:.4g}")
    if isinstance(data, dict):
        return {key: rounded(value) for key, value in data.items()}
    if isinstance(data, list | tuple):
        return [rounded(value) for value in data]
    return data


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line (see --help)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3, help="runs of each benchmark (default 3)")
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHES,
        metavar="NAME",
        help=f"run only this benchmark (repeatable): {', '.join(BENCHES)}",
    )
    parser.add_argument("--results", type=Path, help="where the JSON record goes")
    parser.add_argument("--verbose", action="store_true", help="show each run's own output")
    parser.add_argument("--strict", action="store_true", help="exit 1 on a missed target too")
    args = parser.parse_args(argv)
    if args.runs < 1:
        parser.error("--runs must be at least 1")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run, summarise, record; non-zero if a run failed (or, with --strict, a target missed)."""
    args = parse_args(argv)
    benches = [b for b in BENCHES if not args.only or b in args.only]
    started = dt.datetime.now(dt.UTC)
    session = Session(args.runs, started, os.getloadavg())
    logs = STATE_ROOT / "logs" / f"{started:%Y%m%dT%H%M%SZ}"
    console.print(
        f"[bold]make bench[/]: {', '.join(benches)}, {args.runs} run(s) each; logs in {logs}"
    )
    for bench in benches:
        session.runs[bench] = []
        for number in range(1, args.runs + 1):
            run = run_once(bench, number, args.runs, logs, verbose=args.verbose)
            session.runs[bench].append(run)
            report_run(run, args.runs)
    console.print(summary_table(session))
    record = session_record(session)
    default = STATE_ROOT / "results" if tiny() else HERE / "results"
    path = write_record(record, args.results or default, started)
    counts = record["verdicts"]
    console.print(f"verdicts {counts}; record: {path}")
    failed = [run for runs in session.runs.values() for run in runs if run.failed]
    for run in failed:
        console.print(f"[red]{run.bench} run {run.number} failed (exit {run.exit_code}): {run.log}")
    missed = isinstance(counts, dict) and counts.get("MISS", 0) > 0
    return 1 if failed or (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())
