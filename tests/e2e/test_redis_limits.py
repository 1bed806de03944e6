"""What a fleet does to its Redis over time: memory that returns, a full Redis, a restart.

Each test runs a fleet on the real control plane whose agents (started from their pods by a pod
runner of the test's own) use a redis-server of the test's own (tests/redis_proc.py): the test
measures that Redis's memory or kills it, which the shared session Redis must never suffer. The
task policy is the default except where a setting is named: the memory test shortens the result
retention so that "idle past the retention" fits in a test.

The memory and full-Redis tests take minutes of real time by nature: they run as soaks
(tests/soak.py), started early in threads of their own and overlapping the rest of the suite.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

import soak
from harness import Cluster, Fleets, OperatorProcess, agents_of, start_fleet
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.adapters.taskclient import TaskClient, TaskSpec
from newfuse.wire.keys import FleetKeys
from newfuse.wire.scripts import COUNTER_DUPLICATES
from newfuse.wire.taskpolicy import TaskPolicy
from newfuse.wire.tasks import PRIORITY_ORDER
from redis_proc import DedicatedRedis

FLEET = "workers"


@dataclass
class Dedicated:
    """The test's own Redis, and a pod runner that points the fleet's agents at it."""

    server: DedicatedRedis
    runner: PodRunnerProcess
    client: redis.Redis
    keys: FleetKeys

    @property
    def url(self) -> str:
        return self.server.url


@contextmanager
def dedicated_env(cluster: Cluster, fleets: Fleets, state_dir: Path) -> Iterator[Dedicated]:
    """A Redis of the test's own and a pod runner pointing the fleet's agents at it."""
    if not cluster.is_local():
        pytest.skip("the pod runner stands in for the kubelet only on the local cluster")
    with DedicatedRedis(state_dir / "redis") as server:
        runner = PodRunnerProcess(state_dir / "podrunner")
        runner.up(cluster.kubeconfig, server.url, print, namespace=fleets.namespace)
        client = redis.Redis.from_url(server.url, decode_responses=True)
        try:
            yield Dedicated(server, runner, client, FleetKeys(fleets.namespace, FLEET))
        finally:
            runner.down()
            client.close()


@pytest.fixture
def dedicated(
    tmp_path: Path, cluster: Cluster, operator: OperatorProcess, fleets: Fleets
) -> Iterator[Dedicated]:
    with dedicated_env(cluster, fleets, tmp_path) as env:
        yield env


@contextmanager
def soak_env(ctx: soak.SoakContext, name: str) -> Iterator[tuple[Fleets, Dedicated]]:
    """A soak's namespace, Redis and pod runner, gone when it ends."""
    with ctx.resources() as stack:
        fleets = ctx.namespace(stack, name)
        env = stack.enter_context(
            dedicated_env(ctx.cluster, fleets, ctx.state_root / fleets.namespace)
        )
        yield fleets, env


def run_fleet(fleets: Fleets, env: Dedicated, replicas: int, **spec: Any) -> None:
    start_fleet(fleets, env.runner, env.client, FLEET, replicas, fast=False, **spec)


async def submit_steadily(
    env: Dedicated, total: int, per_second: float, payload: Any, prefix: str = "t"
) -> list[float]:
    """Submit ``total`` echo tasks at ``per_second``; returns when each was acknowledged."""
    client = TaskClient.from_url(env.url, env.keys.namespace, FLEET)
    acked: list[float] = []
    started = time.monotonic()
    try:
        for n in range(total):
            delay = started + n / per_second - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await client.submit(TaskSpec("echo", payload, task_id=f"{prefix}{n}"))
            acked.append(time.monotonic())
    finally:
        await client.aclose()
    return acked


def completed(env: Dedicated) -> int:
    return int(env.client.hget(env.keys.counters, "tasksCompleted") or 0)


def empty(env: Dedicated) -> bool:
    """No result, id, retry or task entry left: only the fleet's fixed keys remain."""
    client, keys = env.client, env.keys
    return (
        client.hlen(keys.result_index) == 0
        and client.hlen(keys.task_index) == 0
        and client.xlen(keys.result_stream) == 0
        and all(client.xlen(keys.tasks(p)) == 0 for p in PRIORITY_ORDER)
    )


def used_memory(env: Dedicated) -> int:
    return int(env.client.info("memory")["used_memory"])


def results(env: Dedicated) -> list[dict[str, Any]]:
    return [orjson.loads(raw)["payload"] for raw in env.client.hvals(env.keys.result_index)]


@soak.scenario
def memory_returns_to_its_baseline_after_the_retention(ctx: soak.SoakContext) -> None:
    with soak_env(ctx, "memory") as (fleets, dedicated):
        memory_returns(fleets, dedicated)


@pytest.mark.timeout(1200)  # minutes of real time, overlapping the suite's (tests/soak.py)
def test_memory_returns_to_its_baseline_after_the_retention(soaks: soak.Soaks) -> None:
    took = soaks.outcome(memory_returns_to_its_baseline_after_the_retention, 1100)
    print(f"memory soak took {took:.0f}s")


def memory_returns(fleets: Fleets, dedicated: Dedicated) -> None:
    """20,000 tasks at a steady rate, then idle past the retention (60 s, named here)."""
    ttl = 60
    payload = "x" * 2000
    run_fleet(fleets, dedicated, 4, tasks={"resultTTLSeconds": ttl})
    # Baseline: the fleet registered and idle after a warm-up burst, so that the agents'
    # connection pools are as open as they will be under load (client buffers count in
    # used_memory), and after the warm-up's results expired.
    asyncio.run(submit_steadily(dedicated, 500, 1000, payload, prefix="warm"))
    wait_for(lambda: completed(dedicated) >= 500, 60, what="warm-up done")
    wait_for(lambda: empty(dedicated), ttl + 90, interval=1.0, what="warm-up expired")
    baseline = used_memory(dedicated)
    asyncio.run(submit_steadily(dedicated, 20_000, 400, payload))
    wait_for(lambda: completed(dedicated) >= 20_500, 300, what="20,000 results")
    peak = used_memory(dedicated)
    finished = time.monotonic()
    wait_for(
        lambda: used_memory(dedicated) <= baseline * 1.10,
        ttl + 120,
        interval=2.0,
        what=f"used_memory back within 10% of its baseline {baseline}",
    )
    print(
        f"baseline {baseline} B, {peak} B after 20,000 tasks of 2 kB, back to "
        f"{used_memory(dedicated)} B {time.monotonic() - finished:.0f}s after the last result"
    )
    assert empty(dedicated)


@soak.scenario
def a_full_redis_runs_ten_minutes_of_steady_load(ctx: soak.SoakContext) -> None:
    with soak_env(ctx, "full") as (fleets, dedicated):
        full_redis_steady_load(fleets, dedicated)


@pytest.mark.timeout(1200)  # minutes of real time, overlapping the suite's (tests/soak.py)
def test_a_full_redis_runs_ten_minutes_of_steady_load(soaks: soak.Soaks) -> None:
    took = soaks.outcome(a_full_redis_runs_ten_minutes_of_steady_load, 1100)
    print(f"full-Redis soak took {took:.0f}s")


def full_redis_steady_load(fleets: Fleets, dedicated: Dedicated) -> None:
    """maxmemory 64mb with noeviction: 10 minutes at 20 tasks/s, default retention, no error."""
    dedicated.client.config_set("maxmemory", "64mb")
    dedicated.client.config_set("maxmemory-policy", "noeviction")
    run_fleet(fleets, dedicated, 2)
    total = 20 * 600
    asyncio.run(submit_steadily(dedicated, total, 20, "y" * 256))
    wait_for(lambda: completed(dedicated) >= total, 120, what="every result")
    memory = used_memory(dedicated)
    print(f"{total} tasks in 10 min under maxmemory 64mb: used_memory {memory} B")
    assert {r["status"] for r in results(dedicated)} == {"succeeded"}
    assert len(results(dedicated)) == total
    assert dedicated.client.xlen(dedicated.keys.dead_letters) == 0
    assert int(dedicated.client.info("stats").get("evicted_keys", 0)) == 0
    for agent in agents_of(dedicated.runner, fleets.namespace):
        log = Path(agent.log).read_text(errors="replace")
        assert "OOM" not in log, log[-2000:]
        assert agent.restarts == 0


def test_a_redis_restart_mid_flow_keeps_every_task(fleets: Fleets, dedicated: Dedicated) -> None:
    """SIGKILL Redis (appendfsync everysec, the default) while 2,000 tasks are in flight."""
    policy = TaskPolicy()
    run_fleet(fleets, dedicated, 2, concurrency=8)
    acked = asyncio.run(submit_fast(dedicated, 2000))
    wait_for(lambda: completed(dedicated) >= 300, 60, what="work under way")
    in_flight = 2000 - completed(dedicated)
    dedicated.server.crash()
    killed = time.monotonic()
    dedicated.server.restart()
    restarted = time.monotonic() - killed
    # Results lost with the last second of the AOF are redone once their claims go idle.
    deadline = policy.claim_bound_seconds + 120
    wait_for(lambda: settled(dedicated), deadline, interval=1.0, what="settled")
    done = {r["task_id"] for r in results(dedicated)}
    lost = [n for n in range(2000) if f"t{n}" not in done]
    duplicates = int(dedicated.client.hget(dedicated.keys.counters, COUNTER_DUPLICATES) or 0)
    print(
        f"{in_flight} of 2000 in flight at the kill; restarted in {restarted:.1f}s; "
        f"{len(lost)} submissions lost, duplicate executions {duplicates}"
    )
    # Only submissions acknowledged in the last second before the kill may be lost
    # (appendfsync everysec); every other task has exactly one result.
    assert all(killed - acked[n] <= 2.0 for n in lost), "lost more than the last second"
    assert dedicated.client.hlen(dedicated.keys.result_index) == len(done) == 2000 - len(lost)


async def submit_fast(env: Dedicated, total: int) -> list[float]:
    client = TaskClient.from_url(env.url, env.keys.namespace, FLEET)
    acked: list[float] = []
    try:
        for n in range(total):
            await client.submit(TaskSpec("sleep", {"seconds": 0.05}, task_id=f"t{n}"))
            acked.append(time.monotonic())
    finally:
        await client.aclose()
    return acked


def settled(env: Dedicated) -> bool:
    try:
        waiting = sum(env.client.xlen(env.keys.tasks(p)) for p in PRIORITY_ORDER)
        return waiting == 0 and env.client.zcard(env.keys.retries) == 0
    except redis.ConnectionError:
        return False
