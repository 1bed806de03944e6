"""The operator's side of fleet memory: settling a canary's quarantine, by level.

Apart from newfuse.adapters.redismemory so that the operator, which never embeds or searches,
imports no model or index library: it only runs one Lua step per reconcile.
"""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis

from newfuse.core.memory import settlement
from newfuse.wire import memory
from newfuse.wire.keys import FleetKeys
from newfuse.wire.state import FleetSummary


async def settle(client: aioredis.Redis, keys: FleetKeys, summary: FleetSummary) -> list[int]:
    """Settle the fleet's memory quarantine to what ``summary`` says of trust: [lifted, deleted]."""
    rule = settlement(summary)
    if rule.trusted is None:
        return [0, 0]
    return list(await settle_to(client, keys, rule.trusted, rule.pending))


async def settle_to(
    client: aioredis.Redis, keys: FleetKeys, trusted: str, pending: str | None
) -> tuple[int, int]:
    """Lift ``trusted``'s quarantine, delete every other revision's but ``pending``'s.

    One Lua step (SETTLE_ALL): (lifted, deleted). The operator runs it from the fleet's summary,
    and RedisMemory.settle (the agents' upkeep) with the same arguments.
    """
    script = client.register_script(memory.SETTLE_ALL_LUA)
    lifted, deleted = cast(
        list[int], await script(keys=written_keys(keys), args=[trusted, pending or ""])
    )
    return int(lifted), int(deleted)


def written_keys(k: FleetKeys) -> list[str]:
    """The keys a memory's deletion touches (the scripts' KEYS, in their order)."""
    return [k.memory, k.memory_quarantine, k.memory_vectors, k.memory_next_vectors, k.memory_log]
