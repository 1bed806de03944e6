"""The agent's side of the task streams: fetch by priority, reclaim, complete, requeue, dead-letter.

Tasks live on one Redis stream per priority, read through one consumer group per fleet. An entry
stays in the group's pending list until COMPLETE stores its result and acknowledges it, so a crash
loses nothing: after `claim_idle` another agent takes the entry over with XAUTOCLAIM. Every agent
process is its own consumer (agent id plus a boot id), so a restarted pod never mistakes a dead
incarnation's entries for its own in-flight work.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import ResponseError

from newfuse.wire.keys import FleetKeys
from newfuse.wire.scripts import (
    COMPLETE_LUA,
    COUNTER_COMPLETED,
    COUNTER_FAILED,
    DEAD_LETTER_LUA,
    REQUEUE_LUA,
)
from newfuse.wire.tasks import CONSUMER_GROUP, PRIORITY_ORDER, DeadLetter, Priority


@dataclass(frozen=True)
class Delivery:
    """One stream entry handed to this agent."""

    priority: Priority
    stream: str
    entry_id: str
    fields: dict[str, str]
    times_delivered: int = 1

    @property
    def raw(self) -> str:
        """The envelope as sent (may be anything: it is not trusted yet)."""
        return self.fields.get("envelope", "")


def _entries(response: Any, stream_priority: dict[str, Priority]) -> list[Delivery]:
    out = []
    for stream, entries in response or []:
        for entry_id, fields in entries:
            if fields is None:  # the entry was deleted while pending
                continue
            out.append(Delivery(stream_priority[stream], stream, entry_id, dict(fields)))
    return out


class TaskQueue:
    """Stream operations of one agent process on one fleet's task streams."""

    def __init__(self, client: aioredis.Redis, keys: FleetKeys, consumer: str) -> None:
        """Read as ``consumer`` in the fleet's consumer group through ``client`` (decoded)."""
        self.client, self.keys, self.consumer = client, keys, consumer
        self.streams = {p: keys.tasks(p) for p in PRIORITY_ORDER}
        self._priority_of = {s: p for p, s in self.streams.items()}
        self._complete = client.register_script(COMPLETE_LUA)
        self._requeue = client.register_script(REQUEUE_LUA)
        self._dead_letter = client.register_script(DEAD_LETTER_LUA)

    async def ensure_groups(self) -> None:
        """Create the consumer group on every priority stream (idempotent)."""
        for stream in self.streams.values():
            try:
                await self.client.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
            except ResponseError as exc:
                if "BUSYGROUP" not in str(exc):
                    raise

    async def fetch(self, count: int, block_ms: int) -> list[Delivery]:
        """Up to ``count`` new entries, higher priorities first; blocks only when all are empty."""
        found: list[Delivery] = []
        for priority in PRIORITY_ORDER:
            want = count - len(found)
            if want <= 0:
                break
            response = await self.client.xreadgroup(
                CONSUMER_GROUP, self.consumer, {self.streams[priority]: ">"}, count=want
            )
            found += _entries(response, self._priority_of)
        if found or block_ms <= 0:
            return found
        response = await self.client.xreadgroup(
            CONSUMER_GROUP,
            self.consumer,
            {stream: ">" for stream in self.streams.values()},
            count=count,
            block=block_ms,
        )
        return sorted(
            _entries(response, self._priority_of), key=lambda d: PRIORITY_ORDER.index(d.priority)
        )

    async def reclaim(self, min_idle_ms: int, count: int) -> list[Delivery]:
        """Take over entries another consumer left pending for ``min_idle_ms`` (it died or hung)."""
        claimed: list[Delivery] = []
        for priority in PRIORITY_ORDER:
            stream = self.streams[priority]
            response = await self.client.xautoclaim(
                stream,
                CONSUMER_GROUP,
                self.consumer,
                min_idle_time=min_idle_ms,
                start_id="0-0",
                count=count,
            )
            entries = [(eid, fields) for eid, fields in response[1] if fields]
            if not entries:
                continue
            # XAUTOCLAIM bumped each entry's delivery count; read it to spot poison messages.
            pending = await self.client.xpending_range(
                stream,
                CONSUMER_GROUP,
                min=entries[0][0],
                max=entries[-1][0],
                count=len(entries) * 2,
                consumername=self.consumer,
            )
            delivered = {p["message_id"]: int(p["times_delivered"]) for p in pending}
            claimed += [
                Delivery(priority, stream, eid, dict(fields), delivered.get(eid, 2))
                for eid, fields in entries
            ]
        return claimed

    async def complete(
        self, delivery: Delivery, task_id: str, result: bytes, succeeded: bool, revision: str
    ) -> bool:
        """Store the task's result (first one wins), count it and acknowledge the delivery."""
        keys = self.keys
        counter = COUNTER_COMPLETED if succeeded else COUNTER_FAILED
        stored = await self._complete(
            keys=[keys.result_index, keys.result_stream, delivery.stream, keys.counters],
            args=[task_id, result, CONSUMER_GROUP, delivery.entry_id, counter, revision],
        )
        return bool(stored)

    async def requeue(
        self, delivery: Delivery, task_id: str, envelope: bytes, priority: Priority
    ) -> str:
        """Acknowledge the delivery and put the task back (a retry, or a hand-back on drain)."""
        new_id = await self._requeue(
            keys=[delivery.stream, self.streams[priority], self.keys.task_index],
            args=[CONSUMER_GROUP, delivery.entry_id, task_id, envelope],
        )
        return str(new_id)

    async def dead_letter(self, delivery: Delivery, letter: DeadLetter, acknowledge: bool) -> None:
        """Record a dead letter; acknowledge the delivery too unless a result step will."""
        fields = letter.model_dump(mode="json", exclude_none=True)
        flat: list[str] = []
        for name, value in fields.items():
            flat += [name, str(value)]
        await self._dead_letter(
            keys=[self.keys.dead_letters, delivery.stream],
            args=[CONSUMER_GROUP, delivery.entry_id if acknowledge else "", *flat],
        )

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


def utc_now() -> dt.datetime:
    """The agent's clock (UTC, aware)."""
    return dt.datetime.now(dt.UTC)
