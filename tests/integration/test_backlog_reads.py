"""The backlog and task-counter reads of the operator's RedisStore, on the real Redis (7.0 lag)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest
import redis

from harness import RedisHandle
from newfuse.adapters.redis_store import RedisStore
from newfuse.api.tasks import Backlog, PriorityBacklog
from newfuse.core.backlog import fold_backlog
from newfuse.core.metrics import TaskCounters
from newfuse.wire.keys import FleetKeys
from newfuse.wire.tasks import CONSUMER_GROUP, Priority


@pytest.fixture
def keys(redis_client: redis.Redis) -> Iterator[FleetKeys]:
    fleet_keys = FleetKeys("backlog", uuid.uuid4().hex[:8])
    yield fleet_keys
    redis_client.delete(*fleet_keys.all_keys())


def read(url: str, keys: FleetKeys) -> tuple[Backlog, TaskCounters | None]:
    async def both() -> tuple[Backlog, TaskCounters | None]:
        store = RedisStore(url)
        try:
            return fold_backlog(await store.task_observation(keys)), await store.task_counters(keys)
        finally:
            await store.close()

    return asyncio.run(both())


def row(
    priority: Priority, waiting: int = 0, inflight: int = 0, oldest: int | None = None
) -> PriorityBacklog:
    return PriorityBacklog(
        priority=priority.value, waiting=waiting, inflight=inflight, oldest_waiting_seconds=oldest
    )


def test_backlog_through_a_tasks_life(
    redis_server: RedisHandle, redis_client: redis.Redis, keys: FleetKeys
) -> None:
    empty = [row(Priority.HIGH), row(Priority.NORMAL), row(Priority.LOW)]
    assert read(redis_server.url, keys) == (Backlog(by_priority=empty), None)

    seconds, micros = redis_client.time()
    now_ms = int(seconds) * 1000 + int(micros) // 1000
    normal = keys.tasks(Priority.NORMAL)
    # Entry ids carry the time they were added: these were queued 60, 45, 30 and 15 s ago.
    ids = [redis_client.xadd(normal, {"n": str(i)}, id=f"{now_ms - age}-0") for i, age in
           enumerate((60_000, 45_000, 30_000, 15_000))]  # fmt: skip
    redis_client.xadd(keys.tasks(Priority.LOW), {"n": "low"}, id=f"{now_ms - 5_000}-0")
    backlog, _ = read(redis_server.url, keys)
    # No agent has created the consumer group yet: every entry waits.
    assert (backlog.waiting, backlog.inflight) == (5, 0)
    assert backlog.by_priority[1] == row(
        Priority.NORMAL, 4, 0, backlog.by_priority[1].oldest_waiting_seconds
    )
    assert 60 <= (backlog.oldest_waiting_seconds or 0) <= 62
    assert 5 <= (backlog.by_priority[2].oldest_waiting_seconds or 0) <= 7
    assert backlog.by_priority[0] == row(Priority.HIGH)

    redis_client.xgroup_create(normal, CONSUMER_GROUP, id="0")
    redis_client.xreadgroup(CONSUMER_GROUP, "agent-0", {normal: ">"}, count=2)
    backlog, _ = read(redis_server.url, keys)
    assert backlog.by_priority[1].waiting == 2
    assert backlog.by_priority[1].inflight == 2
    assert 30 <= (backlog.by_priority[1].oldest_waiting_seconds or 0) <= 32, "the third entry"
    assert redis_client.xinfo_groups(normal)[0]["lag"] == 2

    # Agents acknowledge and delete what they finish; deleting the last delivered entry makes
    # Redis 7.0 report no lag at all, and the count must not change because of it.
    redis_client.xack(normal, CONSUMER_GROUP, ids[1])
    redis_client.xdel(normal, ids[1])
    assert redis_client.xinfo_groups(normal)[0]["lag"] is None
    backlog, _ = read(redis_server.url, keys)
    assert (backlog.by_priority[1].waiting, backlog.by_priority[1].inflight) == (2, 1)
    assert backlog.waiting == 3

    redis_client.zadd(keys.retries, {"a": now_ms + 1000, "b": now_ms + 2000})
    redis_client.xreadgroup(CONSUMER_GROUP, "agent-0", {normal: ">"}, count=10)
    backlog, _ = read(redis_server.url, keys)
    assert backlog.by_priority[1] == row(Priority.NORMAL, 0, 3, None)
    assert (backlog.retrying, backlog.waiting, backlog.inflight) == (2, 1, 3)


def test_task_counters(
    redis_server: RedisHandle, redis_client: redis.Redis, keys: FleetKeys
) -> None:
    redis_client.hset(keys.counters, "rev:abc:tasksCompleted", 3)
    assert read(redis_server.url, keys)[1] is None, "no fleet-wide counter yet"
    redis_client.hset(keys.counters, mapping={"tasksCompleted": 7, "duplicates": 1})
    assert read(redis_server.url, keys)[1] == TaskCounters(completed=7, failed=0, duplicates=1)
    redis_client.hincrby(keys.counters, "tasksFailed", 2)
    assert read(redis_server.url, keys)[1] == TaskCounters(completed=7, failed=2, duplicates=1)
    redis_client.hset(keys.counters, "tasksFailed", "garbage")
    assert read(redis_server.url, keys)[1] is None, "malformed counters are not trusted"


def test_a_wrong_key_type_fails_the_read_rather_than_reporting_nothing(
    redis_server: RedisHandle, redis_client: redis.Redis, keys: FleetKeys
) -> None:
    redis_client.set(keys.tasks(Priority.HIGH), "not a stream")
    with pytest.raises(redis.exceptions.ResponseError, match="WRONGTYPE"):
        read(redis_server.url, keys)
