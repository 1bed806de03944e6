"""Timeouts and deadlines end a task with a FAILED result and the reason, through a real agent.

The task's own timeout, the fleet's default when it sets none, and a deadline that passed while
the task waited (an agent that was not there) each give the waiting client an answer at once,
counted once and not retried.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import Iterator
from functools import partial
from typing import Any

import orjson
import pytest
import redis

from agentproc import AgentProcess
from harness import RedisHandle
from localcluster import wait_for
from newfuse.adapters.taskclient import TaskClient, TaskSpec
from newfuse.wire.keys import FleetKeys


@pytest.fixture
def keys(redis_client: redis.Redis) -> Iterator[FleetKeys]:
    fleet = FleetKeys("lifecycle", f"f{uuid.uuid4().hex[:8]}")
    yield fleet
    redis_client.delete(*fleet.all_keys())


def submit(url: str, keys: FleetKeys, *specs: TaskSpec) -> None:
    async def go() -> None:
        client = TaskClient.from_url(url, keys.namespace, keys.fleet)
        for spec in specs:
            await client.submit(spec)
        await client.aclose()

    asyncio.run(go())


def result(client: redis.Redis, keys: FleetKeys, task_id: str) -> dict[str, Any] | None:
    raw = client.hget(keys.result_index, task_id)
    return orjson.loads(raw)["payload"] if raw else None


def test_timeouts_end_a_task_failed_with_reason_timeout(
    redis_server: RedisHandle, redis_client: redis.Redis, keys: FleetKeys
) -> None:
    agent = AgentProcess(
        redis_server.url, keys.namespace, keys.fleet, env={"NEWFUSE_TASK_TIMEOUT_SECONDS": "2"}
    ).start()
    try:
        started = time.monotonic()
        submit(
            redis_server.url,
            keys,
            TaskSpec("sleep", {"seconds": 30}, task_id="own", timeout_seconds=1),
            TaskSpec("sleep", {"seconds": 30}, task_id="fleet-default"),
            TaskSpec("sleep", {"seconds": 0.1}, task_id="in-time", timeout_seconds=5),
        )
        for task_id in ("own", "fleet-default", "in-time"):
            wait_for(partial(result, redis_client, keys, task_id), 30, what=task_id)
        elapsed = time.monotonic() - started
        own, fleet, ok = (
            result(redis_client, keys, t) for t in ("own", "fleet-default", "in-time")
        )
        assert own
        assert fleet
        assert ok
        assert (own["status"], own["reason"], own["attempts"]) == ("failed", "timeout", 1)
        assert "1s" in own["error"]
        assert (fleet["status"], fleet["reason"]) == ("failed", "timeout")
        assert "2s" in fleet["error"], "the fleet's default applies to a task that sets none"
        assert ok["status"] == "succeeded"
        assert elapsed < 20, "ended by the timeouts, not by the 30 s sleeps"
        reasons = [f["reason"] for _, f in redis_client.xrange(keys.dead_letters)]
        assert sorted(reasons) == ["timeout", "timeout"], "each dead-lettered once, not retried"
    finally:
        agent.stop()


def test_a_deadline_that_passed_in_the_queue_ends_the_task_with_reason_deadline(
    redis_server: RedisHandle, redis_client: redis.Redis, keys: FleetKeys
) -> None:
    soon = dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    later = dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)
    submit(
        redis_server.url,
        keys,
        TaskSpec("echo", "late", task_id="late", deadline=soon),
        TaskSpec("echo", "fine", task_id="fine", deadline=later),
    )
    wait_for(lambda: dt.datetime.now(dt.UTC) > soon, 10, what="the deadline to pass")
    agent = AgentProcess(redis_server.url, keys.namespace, keys.fleet).start()
    try:
        wait_for(lambda: result(redis_client, keys, "late"), 30, what="late")
        wait_for(lambda: result(redis_client, keys, "fine"), 30, what="fine")
        late, fine = result(redis_client, keys, "late"), result(redis_client, keys, "fine")
        assert late
        assert fine
        assert (late["status"], late["reason"]) == ("failed", "deadline")
        assert fine["status"] == "succeeded"
    finally:
        agent.stop()
