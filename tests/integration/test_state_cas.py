"""The versioned compare-and-set of StateUpdates, on the real Redis (it is a Lua script)."""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid

import pytest

from harness import RedisHandle
from newfuse.adapters.redis_store import RedisStore
from newfuse.wire.keys import FleetKeys
from newfuse.wire.state import AgentState, AgentStatus, StateUpdate

T0 = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)

pytestmark = pytest.mark.asyncio


def update(agent: str, version: int, status: AgentStatus = AgentStatus.ACTIVE) -> StateUpdate:
    return StateUpdate(
        agent_id=agent, state=AgentState(id=agent, status=status), version=version, timestamp=T0
    )


@pytest.mark.parametrize(
    ("writes", "stored_flags", "final_version"),
    [
        ([1], [True], 1),
        ([1, 2, 3], [True, True, True], 3),
        ([5, 4], [True, False], 5),
        ([5, 5], [True, False], 5),
        ([2, 9, 3, 10], [True, True, False, True], 10),
    ],
    ids=["first", "increasing", "older loses", "equal loses", "interleaved"],
)
async def test_older_versions_never_overwrite_newer(
    redis_server: RedisHandle, writes: list[int], stored_flags: list[bool], final_version: int
) -> None:
    store = RedisStore(redis_server.url)
    keys = FleetKeys("cas", uuid.uuid4().hex[:8])
    try:
        flags = [await store.put_fleet_state(keys, update("fleet", v)) for v in writes]
        assert flags == stored_flags
        stored = await store.get_fleet_state(keys)
        assert stored is not None
        assert stored.version == final_version
    finally:
        await store.delete_fleet(keys)
        await store.close()


async def test_concurrent_writers_leave_the_newest(redis_server: RedisHandle) -> None:
    store = RedisStore(redis_server.url)
    keys = FleetKeys("cas", uuid.uuid4().hex[:8])
    try:
        versions = list(range(1, 201))
        # Shuffle deterministically so old and new writes race each other.
        versions = versions[::2] + versions[1::2][::-1]
        await asyncio.gather(*(store.put_agent_state(keys, update("a-0", v)) for v in versions))
        [stored] = await store.agent_states(keys)
        assert stored.version == 200
    finally:
        await store.delete_fleet(keys)
        await store.close()
