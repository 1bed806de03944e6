"""Waits on delegated tasks in Redis: park a parent, resume it, read the wait-for graph.

Each fleet keeps its own waiting tasks (newfuse.wire.delegation); a child and its parent may be
on two fleets, so the steps that cross fleets (submit the child, resume the parent) are separate
scripts on each fleet's keys, every one of them idempotent. Delegation needs both fleets on one
Redis (the default: the operator's).
"""

from __future__ import annotations

from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError

from newfuse.wire.delegation import (
    COUNTER_DEADLOCKS,
    DEADLOCK_LOG_MAX,
    PARK_WAIT_LUA,
    RESUME_WAIT_LUA,
    TaskRef,
    WaitRecord,
)
from newfuse.wire.keys import FleetKeys
from newfuse.wire.scripts import SUBMIT_LUA
from newfuse.wire.tasks import PRIORITY_ORDER


def keys_of(ref: TaskRef) -> FleetKeys:
    """The keys of the fleet ``ref`` is a task of."""
    return FleetKeys(ref.namespace, ref.fleet)


class WaitStore:
    """Delegation waits through one decoded async Redis client (every fleet's, by its keys)."""

    def __init__(self, client: aioredis.Redis) -> None:
        """Use ``client`` (decode_responses=True)."""
        self.client = client
        self._park = client.register_script(PARK_WAIT_LUA)
        self._resume = client.register_script(RESUME_WAIT_LUA)
        self._submit = client.register_script(SUBMIT_LUA)

    async def submit(self, child: TaskRef, envelope: bytes, priority: str) -> bool:
        """Enqueue the child task on its fleet (idempotent: an id seen before is not again)."""
        k = keys_of(child)
        created, _ = await self._submit(
            keys=[k.task_index, k.tasks(priority)], args=[child.task_id, envelope]
        )
        return bool(int(created))

    async def submit_all(
        self, children: list[TaskRef], envelopes: list[bytes], priority: str
    ) -> None:
        """Enqueue every child on its fleet, in one round trip (idempotent, like submit)."""
        pipe = self.client.pipeline(transaction=False)
        for child, envelope in zip(children, envelopes, strict=True):
            k = keys_of(child)
            await self._submit(
                keys=[k.task_index, k.tasks(priority)], args=[child.task_id, envelope], client=pipe
            )
        await pipe.execute()

    async def park(
        self,
        keys: FleetKeys,
        record: WaitRecord,
        resume: tuple[str, bytes],
        *,
        stream: str,
        group: str,
        entry_id: str,
        consumer: str,
        began_ms: float,
    ) -> str:
        """Record the wait and take the task off ``stream``: 'parked', 'lost' or 'done'.

        ``began_ms`` (from redis_ms, read before the children were submitted) is the wait's age:
        a child cannot start waiting before its parent began to, whichever parks first.
        """
        priority, envelope = resume
        member = f"{priority}\n{record.waiting.marker}\n".encode() + envelope
        k = keys
        wait = record.model_dump_json()
        args: list[str | bytes] = [record.task_id, wait, member, group, entry_id, consumer]
        reply = await self._park(
            keys=[k.waits, k.waits_open, k.waits_resume, stream, k.result_index, k.counters],
            args=[*args, repr(began_ms)],
        )
        return str(reply)

    async def resume(self, waiter: TaskRef, marker: str = "", envelope: bytes | str = b"") -> bool:
        """Put ``waiter`` back on its stream if it still waits (in the wait ``marker``): once."""
        k = keys_of(waiter)
        args: list[Any] = [waiter.task_id, marker, envelope]
        reply = await self._resume(
            keys=[k.waits, k.waits_open, k.waits_resume, k.task_index, k.result_index]
            + [k.tasks(p) for p in PRIORITY_ORDER],
            args=[*args, *PRIORITY_ORDER],
        )
        return bool(int(reply))

    async def parked(self, waiter: TaskRef) -> str | None:
        """The envelope a waiting task was parked as (None: it does not wait)."""
        raw = await self.client.hget(keys_of(waiter).waits_resume, waiter.task_id)
        return None if raw is None else str(raw).split("\n", 2)[-1]

    async def open_waits(self, keys: FleetKeys, limit: int = 200) -> list[tuple[str, float]]:
        """The fleet's waiting task ids with when each wait began (Redis ms), oldest first."""
        found = await self.client.zrange(keys.waits_open, 0, limit - 1, withscores=True)
        return [(str(pair[0]), float(pair[1])) for pair in found]

    async def wait_of(self, task: TaskRef) -> tuple[WaitRecord, float] | None:
        """What ``task`` waits on, and since when; None if it does not wait (or is unreadable)."""
        k = keys_of(task)
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(k.waits, task.task_id)
        pipe.zscore(k.waits_open, task.task_id)
        raw, since = await pipe.execute()
        if raw is None or since is None:
            return None
        try:
            return WaitRecord.model_validate_json(raw), float(since)
        except ValidationError:
            return None

    async def child_state(self, child: TaskRef) -> tuple[str | None, bool]:
        """The child's stored result (its raw envelope) if it has one, and whether it exists.

        It exists once its fleet knows its id: queued, running, retrying or ended.
        """
        k = keys_of(child)
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(k.result_index, child.task_id)
        pipe.hexists(k.task_index, child.task_id)
        result, known = await pipe.execute()
        return (str(result) if result is not None else None), bool(known) or result is not None

    async def results(self, children: list[TaskRef]) -> list[str | None]:
        """Each child's stored result (its raw envelope), None for one that has not ended."""
        pipe = self.client.pipeline(transaction=False)
        for child in children:
            pipe.hget(keys_of(child).result_index, child.task_id)
        return [None if raw is None else str(raw) for raw in await pipe.execute()]

    async def resume_if_done(self, waiter: TaskRef, child: TaskRef | None = None) -> bool:
        """Resume ``waiter`` if enough of what it waits on has ended (and ``child`` is of it).

        Called by each child that ends (and by the sweep): children that end together may each
        see all ended, but RESUME_WAIT_LUA resumes once; none can see too few, since each looks
        after storing its own result.
        """
        found = await self.wait_of(waiter)
        if found is None:
            return False
        waiting = found[0].waiting
        if child is not None and child not in waiting.children:
            return False
        ended = sum(r is not None for r in await self.results(waiting.children))
        return ended >= waiting.need and await self.resume(waiter, waiting.marker)

    async def redis_ms(self) -> float:
        """Redis' clock, in ms to the µs (every wait's age is measured on it)."""
        seconds, micros = await self.client.time()
        return int(seconds) * 1000 + int(micros) / 1000

    async def record_deadlock(
        self, keys: FleetKeys, cycle: str, victim: TaskRef, since_ms: float
    ) -> None:
        """Log a broken deadlock on the victim's fleet (``since_ms``: when its cycle closed)."""
        pipe = self.client.pipeline(transaction=False)
        pipe.xadd(
            keys.deadlocks,
            {"cycle": cycle, "victim": str(victim), "since_ms": str(int(since_ms))},
            maxlen=DEADLOCK_LOG_MAX,
            approximate=True,
        )
        pipe.hincrby(keys.counters, COUNTER_DEADLOCKS, 1)
        await pipe.execute()
