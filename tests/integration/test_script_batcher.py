"""Group commit of Lua steps against a real redis-server: fewer round trips, the same steps.

The agent stores every result through ScriptBatcher, so what it must keep is what one script call
per step gave: each caller gets its own reply or its own error, each step runs exactly once (also
when Redis forgot its scripts), and an idle caller is not kept waiting for company.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
import redis.asyncio as aioredis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from harness import RedisHandle
from localcluster.netutil import free_port
from newfuse.adapters.coalesce import ScriptBatcher
from newfuse.adapters.redis_connect import connect
from newfuse.adapters.taskclient import TaskSpec
from newfuse.wire.tasks import CONSUMER_GROUP, Priority
from newfuse_agent.contract import TaskContext
from newfuse_agent.handlers.echo import echo
from runtime_fleet import Fleet, _count, eventually, with_fleet

pytestmark = pytest.mark.integration

# Adds ARGV[1] to the counter and returns the new total; an argument "boom" fails the call.
ADD = """
if ARGV[1] == 'boom' then return redis.error_reply('refused ' .. KEYS[1]) end
return redis.call('INCRBY', KEYS[1], ARGV[1])
"""


async def _batched(url: str, calls: list[str]) -> tuple[list[object], int, int]:
    client = connect(url, timeout=10)
    key = f"test:batcher:{uuid.uuid4().hex}"
    batcher = ScriptBatcher(client)
    script = client.register_script(ADD)
    try:
        replies = await asyncio.gather(
            *(batcher.call(script, [key], [arg]) for arg in calls), return_exceptions=True
        )
        return replies, batcher.round_trips, int(await client.get(key) or 0)
    finally:
        await client.delete(key)
        await client.aclose()


def test_concurrent_calls_share_round_trips_and_each_gets_its_own_reply(
    redis_server: RedisHandle,
) -> None:
    replies, round_trips, total = asyncio.run(_batched(redis_server.url, ["1"] * 200))
    assert sorted(replies) == list(range(1, 201)), "every step ran once, in some order"  # type: ignore[type-var]
    assert total == 200
    assert round_trips <= 3, f"200 calls at once took {round_trips} round trips"


def test_a_failing_step_fails_only_its_own_caller(redis_server: RedisHandle) -> None:
    replies, _, total = asyncio.run(_batched(redis_server.url, ["1", "boom", "2"]))
    assert [replies[0], replies[2]] == [1, 3], replies
    assert isinstance(replies[1], ResponseError)
    assert "refused" in str(replies[1])
    assert total == 3


def test_steps_run_exactly_once_after_redis_forgot_its_scripts(
    redis_server: RedisHandle,
) -> None:
    async def scenario() -> tuple[list[object], int]:
        client = connect(redis_server.url, timeout=10)
        key = f"test:batcher:{uuid.uuid4().hex}"
        batcher = ScriptBatcher(client)
        script = client.register_script(ADD)
        try:
            await batcher.call(script, [key], ["1"])
            await client.script_flush()  # what a restarted Redis looks like to the agent
            replies = await asyncio.gather(*(batcher.call(script, [key], ["1"]) for _ in range(5)))
            return list(replies), int(await client.get(key) or 0)
        finally:
            await client.delete(key)
            await client.aclose()

    replies, total = asyncio.run(scenario())
    assert sorted(replies) == [2, 3, 4, 5, 6]  # type: ignore[type-var]
    assert total == 6, "a NOSCRIPT call did not run, and its retry ran once"


def test_an_idle_caller_is_sent_at_once(redis_server: RedisHandle) -> None:
    replies, round_trips, _ = asyncio.run(_batched(redis_server.url, ["7"]))
    assert replies == [7]
    assert round_trips == 1


# Keeps Redis busy for ARGV[1] milliseconds, then returns 'slow'.
SLOW = """
local t = redis.call('TIME')
local start = t[1] * 1000 + math.floor(t[2] / 1000)
repeat
  t = redis.call('TIME')
until t[1] * 1000 + math.floor(t[2] / 1000) - start >= tonumber(ARGV[1])
return 'slow'
"""


def test_sequential_batches_reuse_one_connection(redis_server: RedisHandle) -> None:
    async def scenario() -> tuple[list[object], int]:
        client = connect(redis_server.url, timeout=10)
        admin = connect(redis_server.url, timeout=10)
        key = f"test:batcher:{uuid.uuid4().hex}"
        batcher = ScriptBatcher(client)
        script = client.register_script(ADD)
        try:
            before = (await admin.info("stats"))["total_connections_received"]
            replies = [await batcher.call(script, [key], ["1"]) for _ in range(50)]
            after = (await admin.info("stats"))["total_connections_received"]
            return replies, int(after) - int(before)
        finally:
            await batcher.aclose()
            await admin.delete(key)
            await client.aclose()
            await admin.aclose()

    replies, opened = asyncio.run(scenario())
    assert replies == list(range(1, 51))
    assert opened == 1, f"50 round trips opened {opened} connections"


def test_a_batch_cut_off_before_its_reply_leaves_nothing_for_the_next(
    redis_server: RedisHandle,
) -> None:
    async def scenario() -> tuple[BaseException | object, object]:
        client = connect(redis_server.url, timeout=10)
        key = f"test:batcher:{uuid.uuid4().hex}"
        batcher = ScriptBatcher(client)
        slow, add = client.register_script(SLOW), client.register_script(ADD)
        try:
            await batcher.call(add, [key], ["0"])  # scripts loaded, the connection held
            cut = asyncio.ensure_future(batcher.call(slow, [key], ["300"]))
            # A wait, not a poll: the script holds Redis for 300 ms, so any query asking
            # whether it started would itself wait for its end.
            await asyncio.sleep(0.05)
            assert batcher.sending is not None
            batcher.sending.cancel()  # the round trip is abandoned before its reply arrives
            outcome = (await asyncio.gather(cut, return_exceptions=True))[0]
            return outcome, await batcher.call(add, [key], ["5"])
        finally:
            await batcher.aclose()
            await client.delete(key)
            await client.aclose()

    outcome, reply = asyncio.run(scenario())
    assert isinstance(outcome, asyncio.CancelledError), outcome
    assert reply == 5, f"the next batch read {reply!r}: a stale reply of the abandoned one"


def test_a_batch_past_the_socket_timeout_fails_as_a_redis_timeout_and_the_next_one_works(
    redis_server: RedisHandle,
) -> None:
    async def scenario() -> tuple[list[object], object]:
        client = connect(redis_server.url, timeout=0.2)
        key = f"test:batcher:{uuid.uuid4().hex}"
        batcher = ScriptBatcher(client)
        slow, add = client.register_script(SLOW), client.register_script(ADD)
        try:
            await batcher.call(add, [key], ["0"])
            # Fast replies first, then one past the deadline: the deadline is the batch's.
            late = await asyncio.gather(
                *(batcher.call(add, [key], ["1"]) for _ in range(3)),
                batcher.call(slow, [key], ["400"]),
                return_exceptions=True,
            )
            return list(late), await batcher.call(add, [key], ["10"])
        finally:
            await batcher.aclose()
            await client.delete(key)
            await client.aclose()

    late, reply = asyncio.run(scenario())
    assert all(isinstance(r, RedisTimeoutError) for r in late), late
    assert isinstance(reply, int), f"the next batch read {reply!r}"


def test_every_caller_of_an_unreachable_redis_gets_the_error() -> None:
    async def scenario() -> list[object]:
        client: aioredis.Redis = connect(f"redis://127.0.0.1:{free_port()}/0", timeout=2)
        batcher = ScriptBatcher(client)
        script = client.register_script(ADD)
        try:
            replies = await asyncio.gather(
                *(batcher.call(script, ["k"], ["1"]) for _ in range(3)), return_exceptions=True
            )
            return list(replies)
        finally:
            await client.aclose()

    replies = asyncio.run(scenario())
    assert all(isinstance(r, RedisConnectionError) for r in replies), replies


def test_an_agent_fetches_and_stores_short_tasks_in_full_batches(
    redis_server: RedisHandle,
) -> None:
    async def body(fleet: Fleet) -> None:
        async for _ in fleet.client.submit_many(TaskSpec("echo", i) for i in range(400)):
            pass
        async with fleet.agent("batcher-0", concurrency=4) as agent:
            await eventually(lambda: _count(fleet, 400), 60, "400 results")
            round_trips = agent.queue.batch.round_trips
        assert len({r["task_id"] for r in await fleet.results()}) == 400
        # Fetches go through the batcher too, and the fetch that refills the slots of results on
        # their way rides in their round trip: 400 tasks 4 at a time is ~100 round trips. A fetch
        # of its own after each batch of results would be 200; one per result, 400 and more.
        assert round_trips <= 130, f"{round_trips} round trips fetched and stored 400 tasks"

    with_fleet(redis_server.url, body)


def test_slots_refilled_with_results_on_their_way_never_run_more_handlers_than_concurrency(
    redis_server: RedisHandle,
) -> None:
    running, peak = 0, 0

    async def uneven(payload: Any, context: TaskContext) -> Any:
        nonlocal running, peak
        running += 1
        peak = max(peak, running)
        try:
            for _ in range(1 + payload % 4):  # they end a different number of loop turns later
                await asyncio.sleep(0)
            return payload
        finally:
            running -= 1

    async def body(fleet: Fleet) -> None:
        async for _ in fleet.client.submit_many(TaskSpec("uneven", i) for i in range(300)):
            pass
        async with fleet.agent("batcher-2", {"uneven": uneven}, concurrency=3):
            await eventually(lambda: _count(fleet, 300), 60, "300 results")
        assert len({r["task_id"] for r in await fleet.results()}) == 300

    with_fleet(redis_server.url, body)
    assert peak == 3, f"at most 3 handlers at once were to run, and did: {peak}"


def test_a_long_task_does_not_hold_up_the_fetching_of_short_ones(
    redis_server: RedisHandle,
) -> None:
    release = asyncio.Event()

    async def slow(payload: Any, context: TaskContext) -> Any:
        await release.wait()
        return payload

    async def body(fleet: Fleet) -> None:
        async with fleet.agent("batcher-1", {"echo": echo, "slow": slow}, concurrency=2):
            await fleet.client.submit(TaskSpec("slow", "long", task_id="long"))
            await eventually(lambda: _busy(fleet), 10, "the long task running")
            async for _ in fleet.client.submit_many(TaskSpec("echo", i) for i in range(40)):
                pass
            # One slot stays busy with the long task: the other must keep fetching meanwhile.
            await eventually(lambda: _count(fleet, 40), 20, "40 short results beside a long task")
            assert await fleet.client.result("long") is None
            release.set()
            await eventually(lambda: _count(fleet, 41), 20, "the long task's result")

    with_fleet(redis_server.url, body)


async def _busy(fleet: Fleet) -> bool:
    pending = await fleet.redis.xpending(fleet.client.keys.tasks(Priority.NORMAL), CONSUMER_GROUP)
    return int(pending["pending"]) == 1
