"""Benchmark: task throughput and latency of NewFuse agents, beside two baselines from the same run.

All three run against one dedicated redis-server on this machine, one after another:
- raw ceiling: redis-py pipelines of XADD, then XREADGROUP (COUNT 500) + XACK, in one process;
- Dramatiq 2 with its Redis broker and Redis results backend: 4 worker processes x 4 threads
  running the same echo task, timed from the first enqueue to the last stored result;
- NewFuse: 4 `python -m newfuse_agent` processes (concurrency 4) with the echo handler, timed from
  the first submit to the last stored result.
Then NewFuse latency (submit -> result visible to a follower) at fixed offered loads (500 and
2,000 tasks/s).
Not a test: it prints figures; `make bench` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import cast

import dramatiq
import redis
from rich.console import Console
from rich.table import Table

from agentprocs import spawn, start_agents, stop, stop_agents
from environment import STATE_ROOT, bench_redis, report_figures, size
from newfuse.adapters.taskclient import TaskClient, TaskSpec
from newfuse.wire.keys import FleetKeys

console = Console()
AGENTS = 4
CONCURRENCY = 4
NAMESPACE = "bench"
# What XREADGROUP returns with decode_responses=True: [(stream, [(entry id, fields)])] or None.
StreamReply = list[tuple[str, list[tuple[str, dict[str, str]]]]] | None
HERE = Path(__file__).resolve().parent


@dataclass(frozen=True)
class Throughput:
    """One system's result."""

    name: str
    tasks: int
    seconds: float

    @property
    def per_second(self) -> float:
        """Tasks per second."""
        return self.tasks / self.seconds


def raw_ceiling(url: str, count: int) -> Throughput:
    """The fastest this Redis moves stream entries from redis-py: batched XADD, XREADGROUP, XACK."""
    client = redis.Redis.from_url(url, decode_responses=True)
    stream, group = f"bench:raw:{uuid.uuid4().hex[:6]}", "g"
    client.xgroup_create(stream, group, id="0", mkstream=True)
    started = time.perf_counter()
    for offset in range(0, count, 500):
        pipe = client.pipeline(transaction=False)
        for i in range(offset, min(count, offset + 500)):
            pipe.xadd(stream, {"task_id": str(i), "envelope": '{"type":"task"}'})
        pipe.execute()
    done = 0
    while done < count:
        response = cast(StreamReply, client.xreadgroup(group, "c", {stream: ">"}, count=500)) or []
        ids = [entry_id for _, entries in response for entry_id, _ in entries]
        pipe = client.pipeline(transaction=False)
        pipe.xack(stream, group, *ids)
        pipe.execute()
        done += len(ids)
    elapsed = time.perf_counter() - started
    client.delete(stream)
    client.close()
    return Throughput("raw redis-py pipeline (XADD + XREADGROUP + XACK)", count, elapsed)


def dramatiq_run(url: str, count: int, state: Path, namespace: str) -> Throughput:
    """Dramatiq with its Redis broker and results backend doing the same echo work."""
    settings = {"BENCH_REDIS_URL": url, "BENCH_DRAMATIQ_NAMESPACE": namespace}
    env = {
        **os.environ,
        **settings,
        "PYTHONPATH": f"{HERE}{os.pathsep}{os.environ.get('PYTHONPATH', '')}",
    }
    dramatiq_cli = str(Path(sys.executable).with_name("dramatiq"))
    options = ["--processes", str(AGENTS), "--threads", str(CONCURRENCY)]
    workers = [spawn([dramatiq_cli, "dramatiq_echo", *options], env, state / "dramatiq.log")]
    sys.path.insert(0, str(HERE))
    os.environ.update(settings)  # read by dramatiq_echo when imported below

    import dramatiq_echo

    try:
        # Let the workers come up first, like NewFuse's agents are up before timing starts.
        warm = dramatiq_echo.echo.send("warm-up")
        warm.get_result(block=True, timeout=60_000)
        started = time.perf_counter()
        messages = [dramatiq_echo.echo.message(i) for i in range(count)]
        for message in messages:
            dramatiq_echo.broker.enqueue(message)
        for message in messages:
            message.get_result(block=True, timeout=300_000)
        elapsed = time.perf_counter() - started
    finally:
        stop(workers)
    return Throughput(f"Dramatiq {dramatiq.__version__} (Redis broker + results)", count, elapsed)


async def _newfuse_throughput(client: TaskClient, count: int) -> float:
    await client.submit(TaskSpec("echo", "warm-up", task_id="warm-up"))
    await client.wait("warm-up", 60)
    started = time.perf_counter()
    async for _ in client.submit_many(TaskSpec("echo", i) for i in range(count)):
        pass
    while await client.result_count() < count + 1:
        await asyncio.sleep(0.01)
    return time.perf_counter() - started


async def _newfuse_latency(client: TaskClient, rate: float, seconds: float) -> list[float]:
    """Submit at ``rate``/s for ``seconds``; latency = result seen on the stream - submit time."""
    sent: dict[str, float] = {}
    latencies: list[float] = []
    total = int(rate * seconds)
    prefix = f"lat{rate:g}-"

    async def follow() -> None:
        async for _, result in client.follow("$", block_ms=200):
            if result.task_id in sent and result.task_id.startswith(prefix):
                latencies.append(time.perf_counter() - sent[result.task_id])
            if len(latencies) >= total:
                return

    follower = asyncio.create_task(follow())
    await asyncio.sleep(0.2)
    started = time.perf_counter()
    for i in range(total):
        due = started + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        task_id = f"{prefix}{i}"
        sent[task_id] = time.perf_counter()
        await client.submit(TaskSpec("echo", i, task_id=task_id))
    await asyncio.wait_for(follower, 60)
    return latencies


def newfuse_run(
    url: str, count: int, state: Path, rates: list[float], seconds: float, fleet: str
) -> tuple[Throughput, dict[float, list[float]]]:
    """NewFuse agents as processes, the way pods run them: throughput, then latency per rate."""
    agents = start_agents(url, NAMESPACE, fleet, AGENTS, CONCURRENCY, state)

    async def measure() -> tuple[float, dict[float, list[float]]]:
        client = TaskClient.from_url(url, NAMESPACE, fleet)
        try:
            elapsed = await _newfuse_throughput(client, count)
            latencies = {}
            for rate in rates:
                console.print(f"[dim]NewFuse latency at {rate:g}/s for {seconds:g}s")
                latencies[rate] = await _newfuse_latency(client, rate, seconds)
            return elapsed, latencies
        finally:
            await client.aclose()

    try:
        elapsed, latencies = asyncio.run(measure())
    finally:
        stop_agents(agents)
    return Throughput(
        f"NewFuse agents ({AGENTS} processes x concurrency {CONCURRENCY})", count, elapsed
    ), latencies


def percentile(values: list[float], q: float) -> float:
    """The q-quantile (0..1) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    """Run all three on one Redis and print the comparison."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=size(20_000, 300))
    parser.add_argument(
        "--rates",
        default=size("500,2000", "100"),
        help="offered loads (tasks/s) of the latency runs, comma-separated",
    )
    parser.add_argument(
        "--seconds", type=float, default=size(10.0, 1.0), help="length of the latency run"
    )
    args = parser.parse_args(argv)
    rates = [float(rate) for rate in args.rates.split(",")]
    state = STATE_ROOT / "tasks"
    state.mkdir(parents=True, exist_ok=True)
    # Names of their own, so that on a shared Redis (tiny mode in CI) only these keys are removed.
    run_id = uuid.uuid4().hex[:6]
    dramatiq_namespace, fleet = f"bench-dramatiq-{run_id}", f"echo{run_id}"
    mine = (f"{dramatiq_namespace}*", FleetKeys(NAMESPACE, fleet).pattern)
    with bench_redis("tasks") as server:
        try:
            server.clear(*mine)
            console.print(f"[dim]raw ceiling with {args.tasks} entries")
            raw = raw_ceiling(server.url, args.tasks)
            server.clear(*mine)
            console.print(f"[dim]Dramatiq with {args.tasks} tasks")
            drama = dramatiq_run(server.url, args.tasks, state, dramatiq_namespace)
            server.clear(*mine)
            console.print(f"[dim]NewFuse with {args.tasks} tasks")
            ours, latencies = newfuse_run(server.url, args.tasks, state, rates, args.seconds, fleet)
        finally:
            server.clear(*mine)

    table = Table(
        title=f"echo tasks, submit -> result stored ({args.tasks} tasks, same Redis, same run)"
    )
    table.add_column("system")
    table.add_column("tasks/s", justify="right")
    table.add_column("ratio to Dramatiq", justify="right")
    for row in (raw, drama, ours):
        table.add_row(
            row.name, f"{row.per_second:,.0f}", f"{row.per_second / drama.per_second:.2f}"
        )
    console.print(table)
    figures: dict[str, float | int] = {
        "tasks": args.tasks,
        "raw_per_s": raw.per_second,
        "dramatiq_per_s": drama.per_second,
        "newfuse_per_s": ours.per_second,
        "newfuse_ratio_to_dramatiq": ours.per_second / drama.per_second,
        "newfuse_share_of_raw": ours.per_second / raw.per_second,
        "latency_tasks": sum(len(v) for v in latencies.values()),
    }
    for index, (rate, seen) in enumerate(latencies.items()):
        p50, p99 = percentile(seen, 0.5) * 1000, percentile(seen, 0.99) * 1000
        console.print(
            f"NewFuse latency at {rate:g} tasks/s offered for {args.seconds:g}s "
            f"({len(seen)} tasks): p50 {p50:.2f} ms, p99 {p99:.2f} ms"
            + (" (target p99 <= 5 ms)" if index == 0 else "")
        )
        # The first rate's names are the ones the targets and earlier records use.
        name = "latency" if index == 0 else f"latency_at_{rate:g}"
        figures[f"{name}_p50_ms"], figures[f"{name}_p99_ms"] = p50, p99
    console.print(
        f"NewFuse throughput is {ours.per_second / drama.per_second:.2f}x Dramatiq (target >= 3) "
        f"and {ours.per_second / raw.per_second:.1%} of the raw ceiling (target >= 30%)"
    )
    report_figures("task_throughput", figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
