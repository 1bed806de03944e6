"""Delegation against the real Redis: chains, slots, cycles broken as deadlocks, depth, stalls.

Fleets share the namespace `rt` and one Redis; agents run in this process (tests/runtime_fleet.py).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, cast

import pytest

from newfuse.adapters.taskclient import StreamEntries, TaskSpec
from newfuse.adapters.waits import WaitStore
from newfuse.wire.delegation import COUNTER_DEADLOCKS, MAX_DELEGATION_DEPTH
from newfuse.wire.keys import FleetKeys
from newfuse.wire.tasks import ResultPayload
from newfuse_agent import delegations
from newfuse_agent.handlers import TaskContext
from runtime_fleet import Fleet, agents, with_fleets


async def _wait(fleet: Fleet, task_id: str, timeout: float = 30) -> ResultPayload:
    return await fleet.client.wait(task_id, timeout)


def test_a_chain_of_three_fleets_with_one_slot_each_completes(fleet_url: str) -> None:
    async def body(fleets: list[Fleet]) -> None:
        a, b, c = fleets

        async def outer(payload: Any, context: TaskContext) -> Any:
            return {"outer": await context.delegate(b.name, "middle", payload)}

        async def middle(payload: Any, context: TaskContext) -> Any:
            return {"middle": await context.delegate(c.name, "inner", payload)}

        async def inner(payload: Any, context: TaskContext) -> Any:
            return {"inner": payload}

        async with agents((a, {"outer": outer}), (b, {"middle": middle}), (c, {"inner": inner})):
            ids = [(await a.client.submit(TaskSpec("outer", i))).task_id for i in range(5)]
            results = [await _wait(a, task_id) for task_id in ids]
        assert [r.output for r in results] == [
            {"outer": {"middle": {"inner": i}}} for i in range(5)
        ]
        # One slot per fleet, five chains in flight: only a waiting task that frees its slot
        # lets the next one start on the same agent.
        assert int(await a.redis.hget(a.client.keys.counters, "delegations") or 0) == 5

    with_fleets(fleet_url, 3, body)


@pytest.mark.parametrize("parent_parks_late", [False, True], ids=["in-order", "parent-parks-late"])
def test_a_cycle_between_two_fleets_is_broken_at_its_youngest_waiter(
    fleet_url: str, monkeypatch: pytest.MonkeyPatch, parent_parks_late: bool
) -> None:
    parked: list[str] = []

    async def body(fleets: list[Fleet]) -> None:
        a, b = fleets
        _record_parks(monkeypatch, parked, late=a.client.keys if parent_parks_late else None)

        async def ping(payload: Any, context: TaskContext) -> Any:
            return await context.delegate(b.name, "pong", payload, task_id=f"{payload}-pong")

        async def pong(payload: Any, context: TaskContext) -> Any:
            # Asks for the very task that waits on it (an idempotent id): a cycle.
            return await context.delegate(a.name, "ping", payload, task_id=payload)

        async with agents((a, {"ping": ping, "echo": _echo}), (b, {"pong": pong, "echo": _echo})):
            await a.client.submit(TaskSpec("ping", "a1", task_id="a1"))
            victim = await _wait(b, "a1-pong")
            closed = await _cycle_closed_ms(b)
            first = await _wait(a, "a1")
            # Neither fleet's only slot is stuck: both serve new work afterwards.
            assert (
                await _wait(a, (await a.client.submit(TaskSpec("echo", 1))).task_id)
            ).output == 1
            assert (
                await _wait(b, (await b.client.submit(TaskSpec("echo", 2))).task_id)
            ).output == 2
        assert victim.reason == "deadlock"
        cycle = f"rt/{b.name}/a1-pong -> rt/{a.name}/a1 -> rt/{b.name}/a1-pong"
        assert cycle in (victim.error or "")
        assert first.reason == "handler_failed"
        assert f"delegated task rt/{b.name}/a1-pong failed: deadlock" in (first.error or "")
        broken_after = victim.finished_at.timestamp() - closed / 1000
        assert broken_after < delegations_bound(), f"broken {broken_after:.2f}s after"
        print(f"deadlock broken {broken_after:.2f}s after its cycle closed")
        assert int(await b.redis.hget(b.client.keys.counters, COUNTER_DEADLOCKS) or 0) == 1
        [entry] = await _deadlocks(b)
        assert entry[1]["victim"] == f"rt/{b.name}/a1-pong"
        assert not await a.redis.hget(a.client.keys.counters, COUNTER_DEADLOCKS)
        if parent_parks_late:  # the race it stands for: the child's wait was written first
            assert parked == [b.name, a.name]

    with_fleets(fleet_url, 2, body)


def _record_parks(
    monkeypatch: pytest.MonkeyPatch, parked: list[str], late: FleetKeys | None
) -> None:
    """Notes which fleet parked when; parks of ``late``'s fleet wait 0.3 s first.

    A loaded agent can be that slow between submitting a child and parking: the child's agent
    then runs it, delegates and parks first. The victim must still be the wait that closed the
    cycle, the child's.
    """
    park = WaitStore.park

    async def recorded(self: WaitStore, keys: FleetKeys, *args: Any, **kwargs: Any) -> str:
        if keys == late:
            await asyncio.sleep(0.3)
        reply = await park(self, keys, *args, **kwargs)
        parked.append(keys.fleet)
        return reply

    monkeypatch.setattr(WaitStore, "park", recorded)


async def _echo(payload: Any, context: TaskContext) -> Any:
    return payload


def delegations_bound() -> float:
    """The stated bound: a sweep every WAIT_SWEEP_TICKS ticks of a second, plus one tick."""
    from newfuse_agent.runtime import MAINTENANCE_TICK_SECONDS, WAIT_SWEEP_TICKS

    return (WAIT_SWEEP_TICKS + 1) * MAINTENANCE_TICK_SECONDS


async def _cycle_closed_ms(b: Fleet) -> int:
    """When the cycle closed: the start of its youngest wait, the victim's (Redis ms)."""
    [entry] = await _deadlocks(b)
    return int(entry[1]["since_ms"])


async def _deadlocks(fleet: Fleet) -> StreamEntries:
    return cast(StreamEntries, await fleet.redis.xrange(fleet.client.keys.deadlocks))


def test_a_chain_deeper_than_the_limit_is_refused(fleet_url: str) -> None:
    async def body(fleets: list[Fleet]) -> None:
        [a] = fleets

        async def deeper(payload: Any, context: TaskContext) -> Any:
            return await context.delegate(a.name, "deeper", payload + 1)

        async with agents((a, {"deeper": deeper}), concurrency=2):
            task = await a.client.submit(TaskSpec("deeper", 0))
            result = await _wait(a, task.task_id, 60)
        assert result.reason == "handler_failed"
        deepest = await a.client.result(f"{task.task_id}" + ".d0" * MAX_DELEGATION_DEPTH)
        assert deepest is not None
        assert deepest.reason == "delegation_refused"
        assert f"at most {MAX_DELEGATION_DEPTH}" in (deepest.error or "")

    with_fleets(fleet_url, 1, body)


def test_a_wait_on_a_task_its_fleet_lost_fails_as_stalled(
    fleet_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(delegations, "STALL_SECONDS", 1.0)

    async def body(fleets: list[Fleet]) -> None:
        a, gone = fleets

        async def ask_gone(payload: Any, context: TaskContext) -> Any:
            return await context.delegate(gone.name, "anything", payload)

        async with agents((a, {"ask": ask_gone})):
            task = await a.client.submit(TaskSpec("ask", 1))
            await _until(lambda: a.redis.zcard(a.client.keys.waits_open), "the wait")
            await gone.close()  # the other fleet is deleted with its keys: its task is gone
            started = time.monotonic()
            result = await _wait(a, task.task_id)
        assert result.reason == "stalled"
        assert "does not exist on its fleet" in (result.error or "")
        assert time.monotonic() - started < 10

    with_fleets(fleet_url, 2, body)


async def _until(count: Callable[[], Awaitable[int]], what: str) -> None:
    from runtime_fleet import eventually

    async def positive() -> bool:
        return int(await count()) > 0

    await eventually(positive, 20, what)


def test_a_fleet_confined_to_its_own_keys_is_refused_delegation_not_stuck(fleet_url: str) -> None:
    """Per-fleet Redis users: the child cannot be submitted, and the parent fails at once."""

    async def body(fleets: list[Fleet]) -> None:
        a, b = fleets

        async def ask_b(payload: Any, context: TaskContext) -> Any:
            return await context.delegate(b.name, "echo", payload)

        user, password = f"u-{a.name}", "pw-of-the-test-user"
        await a.redis.acl_setuser(
            user, enabled=True, passwords=[f"+{password}"], keys=[f"newfuse:{{rt/{a.name}}}:*"],
            channels=["*"], commands=["+@all"],
        )  # fmt: skip
        try:
            a.url = fleet_url.replace("redis://", f"redis://{user}:{password}@", 1)
            async with agents((a, {"ask": ask_b})):
                task = await a.client.submit(TaskSpec("ask", 1))
                result = await _wait(a, task.task_id, 20)
        finally:
            await a.redis.acl_deluser(user)
        assert result.reason == "delegation_refused"
        assert f"may not reach {b.name}'s tasks" in (result.error or "")

    with_fleets(fleet_url, 2, body)
