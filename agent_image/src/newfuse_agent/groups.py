"""An agent process's membership of its fleet's consumer groups: what it holds, leaving, pruning.

Every agent process is its own consumer, so consumers of dead incarnations pile up in the groups;
these steps, apart from the task queue's hot path, keep the groups to the processes alive.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis

from newfuse.wire.tasks import CONSUMER_GROUP, Priority


class ConsumerGroup:
    """The group membership half of newfuse_agent.queue.TaskQueue."""

    client: aioredis.Redis
    consumer: str
    streams: dict[Priority, str]

    async def pending_count(self) -> int:
        """Entries this consumer holds unacknowledged."""
        total = 0
        for stream in self.streams.values():
            info = await self.client.xpending_range(
                stream, CONSUMER_GROUP, min="-", max="+", count=10_000, consumername=self.consumer
            )
            total += len(info)
        return total

    async def leave(self) -> None:
        """Remove this consumer from the group (only call once it holds nothing)."""
        for stream in self.streams.values():
            await self.client.xgroup_delconsumer(stream, CONSUMER_GROUP, self.consumer)

    async def prune_consumers(self, idle_ms: int, keep: Sequence[str] = ()) -> int:
        """Delete consumers idle for ``idle_ms`` that hold nothing (dead incarnations)."""
        removed = 0
        for stream in self.streams.values():
            consumers: list[dict[str, Any]] = await self.client.xinfo_consumers(
                stream, CONSUMER_GROUP
            )
            for consumer in consumers:
                name = str(consumer["name"])
                if name in keep or name == self.consumer:
                    continue
                if int(consumer["pending"]) == 0 and int(consumer["idle"]) >= idle_ms:
                    await self.client.xgroup_delconsumer(stream, CONSUMER_GROUP, name)
                    removed += 1
        return removed
