"""The fleet's consumer groups: created by whoever reaches the task streams first.

An agent creates them when it starts. A fleet with no agents (new, or scaled to zero by KEDA)
needs them too: the lag an autoscaler reads (XINFO GROUPS) exists only on a group, so without one
the tasks submitted to an empty fleet could never wake it. The operator creates them for a fleet
that has no pods, on every reconcile, so a Redis that lost them meanwhile gets them back.
"""

from __future__ import annotations

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from newfuse.wire.keys import FleetKeys
from newfuse.wire.tasks import CONSUMER_GROUP, PRIORITY_ORDER


async def ensure(client: aioredis.Redis, keys: FleetKeys) -> None:
    """Create the consumer group on every priority stream, from its first entry (idempotent)."""
    for priority in PRIORITY_ORDER:
        try:
            await client.xgroup_create(keys.tasks(priority), CONSUMER_GROUP, id="0", mkstream=True)
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise


async def ensure_without_agents(client: aioredis.Redis, keys: FleetKeys, pods: int) -> None:
    """`ensure` for a fleet of ``pods`` pods, if it has none: no agent is there to do it."""
    if pods == 0:
        await ensure(client, keys)
