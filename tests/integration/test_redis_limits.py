"""What a fleet does to its Redis over time: memory that returns, a full Redis, a restart.

Each test has a redis-server of its own (tests/redis_proc.py), because it measures memory or kills
the server, and real agent processes (as shipped) with the default task policy, except where a
setting is named: the memory test shortens the result retention so that "idle past the retention"
fits in a test.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import orjson
import pytest
import redis

from agentproc import AgentProcess
from localcluster import wait_for
from newfuse.adapters.taskclient import TaskClient, TaskSpec
from newfuse.wire.keys import FleetKeys
from newfuse.wire.scripts import COUNTER_DUPLICATES
from newfuse.wire.taskpolicy import TaskPolicy
from redis_proc import DedicatedRedis

NAMESPACE, FLEET = "limits", "workers"
KEYS = FleetKeys(NAMESPACE, FLEET)


@contextmanager
def agents(url: str, count: int, **env: str) -> Iterator[list[AgentProcess]]:
    procs = [
        AgentProcess(url, NAMESPACE, FLEET, f"agent-{i}", env=env).start() for i in range(count)
    ]
    client = redis.Redis.from_url(url, decode_responses=True)
    try:
        wait_for(lambda: client.hlen(KEYS.agents) >= count, 30, what=f"{count} agents registered")
        yield procs
    finally:
        for proc in procs:
            proc.stop()
        client.close()


async def submit_steadily(
    url: str, total: int, per_second: float, payload: Any, prefix: str = "t"
) -> list[float]:
    """Submit ``total`` echo tasks at ``per_second``; returns when each was acknowledged."""
    client = TaskClient.from_url(url, NAMESPACE, FLEET)
    acked: list[float] = []
    started = time.monotonic()
    try:
        for n in range(total):
            due = started + n / per_second
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            await client.submit(TaskSpec("echo", payload, task_id=f"{prefix}{n}"))
            acked.append(time.monotonic())
    finally:
        await client.aclose()
    return acked


def completed(client: redis.Redis) -> int:
    return int(client.hget(KEYS.counters, "tasksCompleted") or 0)


def _empty(client: redis.Redis) -> bool:
    """No result, id, retry or task entry left: only the fleet's fixed keys remain."""
    return (
        client.hlen(KEYS.result_index) == 0
        and client.hlen(KEYS.task_index) == 0
        and client.xlen(KEYS.result_stream) == 0
        and all(client.xlen(KEYS.tasks(p)) == 0 for p in ("high", "normal", "low"))
    )


def used_memory(client: redis.Redis) -> int:
    return int(client.info("memory")["used_memory"])


@pytest.mark.timeout(1200)  # minutes of real time: the point of the test
def test_memory_returns_to_its_baseline_after_the_retention(tmp_path: Path) -> None:
    """20,000 tasks at a steady rate, then idle past the retention (60 s, named here)."""
    ttl = 60
    with DedicatedRedis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        env = {"NEWFUSE_RESULT_TTL_SECONDS": str(ttl)}
        payload = "x" * 2000
        with agents(server.url, 4, **env):
            # Baseline: the fleet registered and idle after a warm-up burst, so that the agents'
            # connection pools are as open as they will be under load (client buffers count in
            # used_memory), and after the warm-up's results expired.
            asyncio.run(submit_steadily(server.url, 500, 1000, payload, prefix="warm"))
            wait_for(lambda: completed(client) >= 500, 60, what="warm-up done")
            wait_for(lambda: _empty(client), ttl + 90, interval=1.0, what="warm-up expired")
            baseline = used_memory(client)
            asyncio.run(submit_steadily(server.url, 20_000, 400, payload))
            wait_for(lambda: completed(client) >= 20_500, 300, what="20,000 results")
            peak = used_memory(client)
            finished = time.monotonic()
            wait_for(
                lambda: used_memory(client) <= baseline * 1.10,
                ttl + 120,
                interval=2.0,
                what=f"used_memory back within 10% of its baseline {baseline}",
            )
            print(
                f"baseline {baseline} B, {peak} B after 20,000 tasks of 2 kB, back to "
                f"{used_memory(client)} B {time.monotonic() - finished:.0f}s after the last result"
            )
            assert _empty(client)
        client.close()


@pytest.mark.timeout(1200)  # minutes of real time: the point of the test
def test_a_full_redis_runs_ten_minutes_of_steady_load(tmp_path: Path) -> None:
    """maxmemory 64mb with noeviction: 10 minutes at 20 tasks/s, default retention, no error."""
    with DedicatedRedis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        client.config_set("maxmemory", "64mb")
        client.config_set("maxmemory-policy", "noeviction")
        with agents(server.url, 2) as procs:
            total = 20 * 600
            asyncio.run(submit_steadily(server.url, total, 20, "y" * 256))
            wait_for(lambda: client.hlen(KEYS.result_index) >= total, 120, what="every result")
            stats = client.info("stats")
            memory = used_memory(client)
            print(f"{total} tasks in 10 min under maxmemory 64mb: used_memory {memory} B")
            assert {r["payload"]["status"] for r in _results(client)} == {"succeeded"}
            assert client.xlen(KEYS.dead_letters) == 0
            assert int(stats.get("evicted_keys", 0)) == 0
            for proc in procs:
                assert proc.alive
                assert "OOM" not in proc.output(), proc.output()[-2000:]
        client.close()


def _results(client: redis.Redis) -> list[dict[str, Any]]:
    return [orjson.loads(raw) for raw in client.hvals(KEYS.result_index)]


def test_a_redis_restart_mid_flow_keeps_every_task(tmp_path: Path) -> None:
    """SIGKILL Redis (appendfsync everysec, the default) while 2,000 tasks are in flight."""
    policy = TaskPolicy()
    with DedicatedRedis(tmp_path / "redis") as server:
        client = redis.Redis.from_url(server.url, decode_responses=True)
        with agents(server.url, 2, NEWFUSE_CONCURRENCY="8"):
            acked = asyncio.run(_submit_fast(server.url, 2000))
            wait_for(lambda: client.hlen(KEYS.result_index) >= 300, 60, what="work under way")
            in_flight = 2000 - client.hlen(KEYS.result_index)
            server.crash()
            killed = time.monotonic()
            server.restart()
            restarted = time.monotonic() - killed
            # Results lost with the last second of the AOF are redone once their claims go idle.
            deadline = policy.claim_bound_seconds + 120
            wait_for(lambda: _settled(client, acked), deadline, interval=1.0, what="settled")
            done = {r["payload"]["task_id"] for r in _results(client)}
            lost = [n for n in range(2000) if f"t{n}" not in done]
            duplicates = int(client.hget(KEYS.counters, COUNTER_DUPLICATES) or 0)
            print(
                f"{in_flight} of 2000 in flight at the kill; restarted in {restarted:.1f}s; "
                f"{len(lost)} submissions lost, duplicate executions {duplicates}"
            )
            # Only submissions acknowledged in the last second before the kill may be lost
            # (appendfsync everysec); every other task has exactly one result.
            assert all(killed - acked[n] <= 2.0 for n in lost), "lost more than the last second"
            assert client.hlen(KEYS.result_index) == len(done) == 2000 - len(lost)
        client.close()


async def _submit_fast(url: str, total: int) -> list[float]:
    client = TaskClient.from_url(url, NAMESPACE, FLEET)
    acked: list[float] = []
    try:
        for n in range(total):
            await client.submit(TaskSpec("sleep", {"seconds": 0.05}, task_id=f"t{n}"))
            acked.append(time.monotonic())
    finally:
        await client.aclose()
    return acked


def _settled(client: redis.Redis, acked: list[float]) -> bool:
    try:
        waiting = sum(client.xlen(KEYS.tasks(p)) for p in ("high", "normal", "low"))
        return waiting == 0 and client.zcard(KEYS.retries) == 0
    except redis.ConnectionError:
        return False
