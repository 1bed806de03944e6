"""The agent runtime against the real Redis: draining, and the coordination channel.

A drain finishes in-flight work within its grace period or hands it back, and finishes even when
redis-py turns the cancellation of a read into an error; agents answer a ping and drain when a
drain names them, leaving the others alone. Agents run in this process (tests/runtime_fleet.py).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson

from newfuse.adapters.taskclient import TaskSpec
from newfuse.wire.envelope import MessageType
from newfuse.wire.state import AgentStatus
from newfuse_agent.handlers import TaskContext
from newfuse_agent.handlers.echo import echo
from runtime_fleet import Fleet, _true, eventually, with_fleet


def test_drain_finishes_in_flight_work_or_hands_it_back(fleet_url: str) -> None:
    release = asyncio.Event()

    async def slow(task_input: Any, context: TaskContext) -> Any:
        if task_input == "forever":
            await asyncio.Event().wait()
        await release.wait()
        return task_input

    async def body(fleet: Fleet) -> None:
        quick = await fleet.client.submit(TaskSpec("slow", "quick"))
        stuck = await fleet.client.submit(TaskSpec("slow", "forever"))
        async with fleet.agent("leaver", {"slow": slow}, drain_grace_seconds=1.0) as agent:
            await eventually(lambda: _true(len(agent._inflight) == 2), 10, "two tasks in flight")
            agent.request_drain()
            release.set()
        # "quick" finished during the grace period; "forever" was handed back, not lost.
        assert (await fleet.client.wait(quick.task_id, 5)).agent_id == "leaver"
        assert await fleet.client.result(stuck.task_id) is None
        release.set()
        async with fleet.agent("successor", {"slow": echo}):
            assert (await fleet.client.wait(stuck.task_id, 10)).agent_id == "successor"
        [state] = [u for u in await fleet.client.agents() if u.agent_id == "leaver"]
        assert state.state.status is AgentStatus.INACTIVE

    with_fleet(fleet_url, body)


def test_coordination_channel_ping_and_targeted_drain(fleet_url: str) -> None:
    async def body(fleet: Fleet) -> None:
        async with fleet.agent("stays") as stays, fleet.agent("goes") as goes:
            pubsub = fleet.redis.pubsub()
            await pubsub.subscribe(fleet.client.keys.coordination_channel)
            heard = await fleet.client.publish(MessageType.PING, {"target": "*"})
            assert heard >= 3, "both agents and this test are subscribed"
            pongs: set[str] = set()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while pongs != {"stays", "goes"} and loop.time() < deadline:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                if message is None:
                    continue
                envelope = orjson.loads(message["data"])
                if envelope["type"] == "pong":
                    pongs.add(envelope["payload"]["agent_id"])
            assert pongs == {"stays", "goes"}
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await fleet.client.publish(MessageType.DRAIN, {"target": "goes"})
            await eventually(lambda: _true(not goes.ready), 10, "the targeted agent draining")
            assert stays.ready, "a drain for one agent leaves the others alone"
            done = await fleet.client.submit(TaskSpec("echo", "still served"))
            assert (await fleet.client.wait(done.task_id, 10)).agent_id == "stays"

    with_fleet(fleet_url, body)


def test_drain_finishes_when_redis_turns_a_cancellation_into_an_error(fleet_url: str) -> None:
    """redis-py raises ConnectionError for a read cancelled mid-way; that must not stall a drain."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    async def body(fleet: Fleet) -> None:
        entered = asyncio.Event()

        async def fetch_like_redis_py(count: int, block_ms: int) -> list[Any]:
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                raise RedisConnectionError("Connection closed by server.") from None
            return []

        loop = asyncio.get_running_loop()
        async with fleet.agent("stubborn") as agent:
            agent.queue.fetch = fetch_like_redis_py  # type: ignore[method-assign]
            await asyncio.wait_for(entered.wait(), 10)
            started = loop.time()
        assert loop.time() - started < 8, (
            "the drain finished (it used to loop on the error forever)"
        )

    with_fleet(fleet_url, body)
