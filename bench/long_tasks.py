"""Benchmark: long tasks (60 s each) on a fleet of agents, and whether any ran twice.

200 `sleep` tasks of 60 s (task timeout 120 s) on 4 `python -m newfuse_agent` processes with
concurrency 16, timed from the first submit to the last stored result. The baseline is the ideal
schedule on the same slots: ceil(tasks / (agents x concurrency)) waves of the task length, so the
ratio is the time lost to distribution, polling and result storage.

The figure that matters is DUPLICATE EXECUTIONS: handler runs whose result was not stored because
the task already had one (a second agent took the task over while the first still ran it). Each
agent counts them in `newfuse_agent_tasks_total{outcome="duplicate"}`, scraped from every agent
once no task is in flight any more; the fleet counters hash is read too (field `duplicates`, which
the result-storing script increments). Any duplicate makes the benchmark exit 1: long tasks must
run once.
Not a test: `make bench` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import math
import sys
import time
import uuid
from typing import cast

import redis
from rich.console import Console
from rich.table import Table

from agentprocs import Agent, start_agents, stop_agents
from environment import STATE_ROOT, bench_redis, report_figures, size
from localcluster.waiting import wait_for
from newfuse.adapters.taskclient import TaskClient, TaskSpec
from newfuse.wire.keys import FleetKeys
from newfuse.wire.scripts import COUNTER_DUPLICATES
from newfuse.wire.tasks import ResultStatus

console = Console()
NAMESPACE = "bench"


async def run_tasks(
    client: TaskClient, tasks: int, seconds: float, timeout: float, agents: int
) -> tuple[float, int]:
    """Submit ``tasks`` sleeps once all agents are up; return wall seconds and failed results."""
    deadline = time.monotonic() + 60
    while len(await client.agents()) < agents:
        if time.monotonic() > deadline:
            raise TimeoutError(f"{agents} agents did not all register within 60 s")
        await asyncio.sleep(0.2)
    ids = [f"long-{i}" for i in range(tasks)]
    specs = (
        TaskSpec("sleep", {"seconds": seconds}, task_id=task_id, timeout_seconds=timeout)
        for task_id in ids
    )
    started = time.perf_counter()
    async for _ in client.submit_many(specs):
        pass
    # Generous: a slow machine may need extra waves, and a task taken over runs again.
    deadline = time.monotonic() + 3 * ideal_seconds(tasks, seconds, agents, 1) + 120
    while await client.result_count() < tasks:
        if time.monotonic() > deadline:
            raise TimeoutError(f"only {await client.result_count()} of {tasks} results stored")
        await asyncio.sleep(0.2)
    wall = time.perf_counter() - started
    failed = 0
    for task_id in ids:
        result = await client.result(task_id)
        if result is None or result.status is not ResultStatus.SUCCEEDED:
            failed += 1
    return wall, failed


def ideal_seconds(tasks: int, seconds: float, agents: int, concurrency: int) -> float:
    """The wall time with no overhead at all: full waves of ``seconds`` on every slot."""
    return math.ceil(tasks / (agents * concurrency)) * seconds


def quiesce(agents: list[Agent], seconds: float) -> None:
    """Wait until no agent runs a task: a losing second run is only counted once it ends."""

    def idle() -> bool:
        return all(a.sample("newfuse_agent_tasks_inflight") == 0 for a in agents)

    wait_for(idle, seconds + 60, what="every agent to have no task in flight", interval=0.5)


def main(argv: list[str] | None = None) -> int:
    """Run the long tasks and print the table; exit 1 on any duplicate execution or failure."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=size(200, 8))
    parser.add_argument("--seconds", type=float, default=size(60.0, 3.0), help="length of a task")
    parser.add_argument("--agents", type=int, default=4)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--timeout", type=float, default=120.0, help="task timeout (seconds)")
    args = parser.parse_args(argv)
    tasks, seconds, agents_n, concurrency = args.tasks, args.seconds, args.agents, args.concurrency
    if args.timeout <= seconds:
        parser.error("--timeout must exceed --seconds, or every task would time out")

    state = STATE_ROOT / "long"
    fleet = f"long{uuid.uuid4().hex[:6]}"
    keys = FleetKeys(NAMESPACE, fleet)
    with bench_redis("long") as server:
        server.clear(keys.pattern)
        agents = start_agents(server.url, NAMESPACE, fleet, agents_n, concurrency, state)
        try:
            console.print(
                f"[dim]{tasks} sleep tasks of {seconds:g}s on {agents_n} agents x {concurrency}"
            )

            async def measure() -> tuple[float, int]:
                client = TaskClient.from_url(server.url, NAMESPACE, fleet)
                try:
                    return await run_tasks(client, tasks, seconds, args.timeout, agents_n)
                finally:
                    await client.aclose()

            wall, failed = asyncio.run(measure())
            quiesce(agents, seconds)
            duplicate_metric = sum(
                a.sample("newfuse_agent_tasks_total", outcome="duplicate") for a in agents
            )
            reclaimed = sum(a.sample("newfuse_agent_tasks_reclaimed_total") for a in agents)
            conn = redis.Redis.from_url(server.url, decode_responses=True)
            counters = cast(dict[str, str], conn.hgetall(keys.counters))
            conn.close()
        finally:
            stop_agents(agents)
            server.clear(keys.pattern)

    # The agents add the field at the first duplicate; a counters hash without it counted none.
    duplicates_fleet = int(counters.get(COUNTER_DUPLICATES, 0)) if counters else None
    duplicates = max(int(duplicate_metric), duplicates_fleet or 0)
    ideal = ideal_seconds(tasks, seconds, agents_n, concurrency)
    table = Table(title=f"{tasks} tasks of {seconds:g} s, {agents_n} agents x {concurrency}")
    for column in ("what", "wall s", "tasks/s", "ratio to ideal"):
        table.add_column(column, justify="left" if column == "what" else "right")
    table.add_row("ideal schedule (full waves, no overhead)", f"{ideal:.1f}", "", "1.00")
    table.add_row("NewFuse agents", f"{wall:.1f}", f"{tasks / wall:.2f}", f"{wall / ideal:.3f}")
    console.print(table)
    fleet_text = "n/a (no counters)" if duplicates_fleet is None else str(duplicates_fleet)
    console.print(
        f"duplicate executions: {int(duplicate_metric)} (agent metrics), {fleet_text} "
        f"(fleet counters); tasks reclaimed: {int(reclaimed)}; failed results: {failed} "
        "(target: 0 duplicates, 0 failed)"
    )
    report_figures(
        "long_tasks",
        {
            "tasks": tasks,
            "task_seconds": seconds,
            "wall_s": wall,
            "ideal_s": ideal,
            "ratio_to_ideal": wall / ideal,
            "tasks_per_s": tasks / wall,
            "duplicates": duplicates,
            "reclaimed": reclaimed,
            "failed": failed,
        },
    )
    if duplicates or failed:
        console.print(f"[red]{duplicates} duplicate executions, {failed} failed results")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
