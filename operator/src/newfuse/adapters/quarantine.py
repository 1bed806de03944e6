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
    script = client.register_script(memory.SETTLE_ALL_LUA)
    args = [rule.trusted, rule.pending or ""]
    return cast(list[int], await script(keys=written_keys(keys), args=args))


def written_keys(k: FleetKeys) -> list[str]:
    """The keys a memory's deletion touches (the scripts' KEYS, in their order)."""
    return [k.memory, k.memory_quarantine, k.memory_vectors, k.memory_next_vectors, k.memory_log]
