"""Reclaiming keeps XAUTOCLAIM's cursor: idle entries behind a long busy head come back.

XAUTOCLAIM looks at a bounded number of pending entries per call (ten times its COUNT). An agent
with one free slot that restarted every pass at "0-0" would look at the same busy entries for
ever and never reach a dead consumer's entries behind them; with the cursor kept, each pass goes
further. A real agent process, a real Redis.
"""

from __future__ import annotations

import asyncio
import threading
import uuid
from collections.abc import Iterator
from typing import cast

import pytest
import redis

from agentproc import AgentProcess
from harness import RedisHandle
from localcluster import wait_for
from newfuse.adapters.taskclient import StreamReply, TaskClient, TaskSpec
from newfuse.wire.keys import FleetKeys
from newfuse.wire.tasks import CONSUMER_GROUP, Priority

BUSY = 200


@pytest.fixture
def keys(redis_client: redis.Redis) -> Iterator[FleetKeys]:
    fleet = FleetKeys("reclaim", f"f{uuid.uuid4().hex[:8]}")
    yield fleet
    redis_client.delete(*fleet.all_keys())


def test_idle_entries_behind_a_busy_head_are_reclaimed(
    redis_server: RedisHandle, redis_client: redis.Redis, keys: FleetKeys
) -> None:
    stream = keys.tasks(Priority.NORMAL)

    async def submit(n: int, prefix: str) -> None:
        client = TaskClient.from_url(redis_server.url, keys.namespace, keys.fleet)
        specs = (TaskSpec("echo", i, task_id=f"{prefix}{i}") for i in range(n))
        async for _ in client.submit_many(specs):
            pass
        await client.aclose()

    redis_client.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
    asyncio.run(submit(BUSY, "busy-"))
    busy = cast(
        StreamReply, redis_client.xreadgroup(CONSUMER_GROUP, "alive:1", {stream: ">"}, count=BUSY)
    )
    assert busy
    busy_ids: list[str | bytes | int | memoryview[int]] = [e for e, _ in busy[0][1]]
    asyncio.run(submit(5, "lost-"))
    redis_client.xreadgroup(CONSUMER_GROUP, "dead:1", {stream: ">"}, count=5)

    # The busy consumer is alive: it keeps renewing its head of 200 entries.
    stop = threading.Event()

    def renew() -> None:
        while not stop.wait(0.1):
            redis_client.xclaim(stream, CONSUMER_GROUP, "alive:1", 0, busy_ids, justid=True)

    renewer = threading.Thread(target=renew, daemon=True)
    renewer.start()
    agent = AgentProcess(
        redis_server.url,
        keys.namespace,
        keys.fleet,
        env={
            "NEWFUSE_CONCURRENCY": "1",
            "NEWFUSE_CLAIM_IDLE_SECONDS": "1",
            "NEWFUSE_LEASE_RENEW_SECONDS": "0.2",
        },
    ).start()
    try:
        wait_for(
            lambda: all(redis_client.hexists(keys.result_index, f"lost-{i}") for i in range(5)),
            60,
            what="the dead consumer's entries, behind 200 busy ones, reclaimed and run",
        )
        assert not any(redis_client.hexists(keys.result_index, f"busy-{i}") for i in range(BUSY))
    finally:
        stop.set()
        renewer.join(5)
        agent.stop()
