"""The agent's side of the task streams: fetch, renew, reclaim, complete, retry, dead-letter, sweep.

Tasks live on one Redis stream per priority, read through one consumer group per fleet. An entry
stays in the group's pending list until COMPLETE stores its result, acknowledges and deletes it, so
a crash loses nothing. A worker renews the entries it holds every `lease_renew_seconds` (RENEW),
so only the entries of a consumer that stopped renewing, a dead one, ever go idle for
`claim_idle_seconds` and are taken over by another agent with XAUTOCLAIM, however long the task
itself runs. Every agent process is its own consumer (agent id plus a boot id), so a restarted pod
never mistakes a dead incarnation's entries for its own in-flight work.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from newfuse.adapters import taskgroups
from newfuse.adapters.coalesce import ScriptBatcher
from newfuse.wire.keys import FleetKeys
from newfuse.wire.scripts import (
    COMPLETE_LUA,
    COUNTER_COMPLETED,
    COUNTER_FAILED,
    DEAD_LETTER_LUA,
    FETCH_LUA,
    GUARD_LUA,
    PROMOTE_DUE_LUA,
    RENEW_LUA,
    REPLACE_FORGED_LUA,
    REQUEUE_LUA,
    SWEEP_LUA,
)
from newfuse.wire.taskpolicy import TaskPolicy
from newfuse.wire.tasks import CONSUMER_GROUP, PRIORITY_ORDER, DeadLetter, Priority, TaskEvent
from newfuse_agent.groups import ConsumerGroup

SWEEP_BATCH = 1000


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


def _scripted(reply: Any, stream_priority: dict[str, Priority]) -> list[Delivery]:
    # FETCH's reply: [(stream, [(entry id, [field, value, ...])])], fields as Redis holds them.
    return [
        Delivery(
            stream_priority[stream], stream, eid, dict(zip(flat[::2], flat[1::2], strict=True))
        )
        for stream, entries in reply
        for eid, flat in entries
        if flat is not None  # the entry was deleted while pending
    ]


def _ms(seconds: float) -> int:
    return max(0, round(seconds * 1000))


class TaskQueue(ConsumerGroup):
    """Stream operations of one agent process on one fleet's task streams."""

    def __init__(
        self, client: aioredis.Redis, keys: FleetKeys, consumer: str, policy: TaskPolicy
    ) -> None:
        """Read as ``consumer`` in the fleet's consumer group through ``client`` (decoded)."""
        self.client, self.keys, self.consumer, self.policy = client, keys, consumer, policy
        self.streams = {p: keys.tasks(p) for p in PRIORITY_ORDER}
        self._priority_of = {s: p for p, s in self.streams.items()}
        # XAUTOCLAIM walks the pending list in pages; the cursor must be kept between passes, or
        # idle entries behind a page of busy ones would never be reached.
        self._cursors = dict.fromkeys(self.streams.values(), "0-0")
        self._complete = client.register_script(COMPLETE_LUA)
        self._replace_forged = client.register_script(REPLACE_FORGED_LUA)
        self._requeue = client.register_script(REQUEUE_LUA)
        self._dead_letter = client.register_script(DEAD_LETTER_LUA)
        self._promote = client.register_script(PROMOTE_DUE_LUA)
        self._renew = client.register_script(RENEW_LUA)
        self._sweep = client.register_script(SWEEP_LUA)
        self._guard = client.register_script(GUARD_LUA)
        self._fetch = client.register_script(FETCH_LUA)
        # Fetches, results and replay guards: the hot path, so they share round trips.
        self.batch = ScriptBatcher(client)
        # Entries whose COMPLETE is queued or out (their handler is done), and a signal for the
        # consumer that their slots may be refilled in the same round trip.
        self.ending: set[str] = set()
        self.slot_freed = asyncio.Event()

    async def ensure_groups(self) -> None:
        """Create the consumer group on every priority stream (idempotent)."""
        await taskgroups.ensure(self.client, self.keys)

    async def fetch(self, count: int, block_ms: int) -> list[Delivery]:
        """Up to ``count`` new entries, higher priorities first; blocks only when all are empty."""
        reply = await self.batch.call(
            self._fetch, list(self.streams.values()), [CONSUMER_GROUP, self.consumer, count]
        )
        found = _scripted(reply, self._priority_of)
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

    async def renew(self, held: Iterable[Delivery]) -> set[str]:
        """Refresh the claims on ``held``; return the entry ids this consumer no longer owns."""
        by_stream: dict[str, list[str]] = {}
        for delivery in held:
            by_stream.setdefault(delivery.stream, []).append(delivery.entry_id)
        lost: set[str] = set()
        for stream, ids in by_stream.items():
            reply = await self._renew(keys=[stream], args=[CONSUMER_GROUP, self.consumer, *ids])
            lost.update(str(i) for i in reply)
        return lost

    async def reclaim(self, count: int) -> list[Delivery]:
        """Take over entries whose owner stopped renewing them for the claim bound (it died)."""
        min_idle = _ms(self.policy.claim_idle_seconds)
        claimed: list[Delivery] = []
        for priority in PRIORITY_ORDER:
            stream = self.streams[priority]
            want = count - len(claimed)
            if want <= 0:
                break
            response = await self.client.xautoclaim(
                stream,
                CONSUMER_GROUP,
                self.consumer,
                min_idle_time=min_idle,
                start_id=self._cursors[stream],
                count=want,
            )
            self._cursors[stream] = str(response[0])
            entries = [(eid, fields) for eid, fields in response[1] if fields]
            if entries:
                claimed += await self._with_delivery_counts(priority, stream, entries)
        return claimed

    async def _with_delivery_counts(
        self, priority: Priority, stream: str, entries: list[tuple[str, dict[str, str]]]
    ) -> list[Delivery]:
        # XAUTOCLAIM bumped each entry's delivery count: an owner died holding it.
        pending = await self.client.xpending_range(
            stream,
            CONSUMER_GROUP,
            min=entries[0][0],
            max=entries[-1][0],
            count=len(entries) * 2,
            consumername=self.consumer,
        )
        delivered = {p["message_id"]: int(p["times_delivered"]) for p in pending}
        return [
            Delivery(priority, stream, eid, dict(fields), delivered.get(eid, 2))
            for eid, fields in entries
        ]

    async def complete(
        self,
        delivery: Delivery,
        task_id: str,
        result: bytes,
        *,
        succeeded: bool,
        revision: str,
        executed: bool,
        letter: DeadLetter | None = None,
        events: bool = False,
    ) -> bool | str:
        """Store the task's first result (and its dead letter), count it, ack and delete it.

        ``events``: the task is followed by the fleet API, so a stored result also adds its
        `ended` event. True if stored; else the result the task already had (the caller checks
        it), or False.
        """
        keys, policy = self.keys, self.policy
        counter = COUNTER_COMPLETED if succeeded else COUNTER_FAILED
        self.ending.add(delivery.entry_id)
        self.slot_freed.set()
        stored = await self.batch.call(
            self._complete,
            [
                keys.result_index,
                keys.result_stream,
                delivery.stream,
                keys.counters,
                keys.expiry_of(keys.result_index),
                keys.expiry_of(keys.task_index),
                keys.dead_letters,
                *([keys.a2a_events] if events else []),
            ],
            [
                task_id,
                result,
                CONSUMER_GROUP,
                delivery.entry_id,
                counter,
                revision,
                _ms(policy.result_ttl_seconds),
                policy.result_stream_max,
                policy.dead_letter_max,
                "1" if executed else "0",
                *(_flat(letter) if letter is not None else ()),
            ],
        )
        return stored if isinstance(stored, str) else bool(stored)

    async def note_started(self, task_id: str) -> None:
        """Add a `working` event for a task the fleet API follows (TaskPayload.events)."""
        # Best effort: a subscriber missing one `working` update beats failing the task over it.
        with contextlib.suppress(RedisError):
            await self.client.xadd(
                self.keys.a2a_events,
                {"task_id": task_id, "state": TaskEvent.WORKING.value},
                maxlen=self.policy.result_stream_max,
                approximate=True,
            )

    async def replace_forged(
        self,
        task_id: str,
        forged: str,
        result: bytes,
        *,
        succeeded: bool,
        revision: str,
        executed: bool,
    ) -> bool:
        """Put the agent's ``result`` in place of ``forged``, if that is still what is stored."""
        keys = self.keys
        replaced = await self._replace_forged(
            keys=[
                keys.result_index,
                keys.result_stream,
                keys.counters,
                keys.expiry_of(keys.result_index),
                keys.expiry_of(keys.task_index),
            ],
            args=[
                task_id,
                forged,
                result,
                COUNTER_COMPLETED if succeeded else COUNTER_FAILED,
                revision,
                _ms(self.policy.result_ttl_seconds),
                self.policy.result_stream_max,
                "1" if executed else "0",
            ],
        )
        return bool(replaced)

    async def requeue(
        self,
        delivery: Delivery,
        task_id: str,
        envelope: bytes | str,
        priority: Priority,
        delay_seconds: float | None = None,
    ) -> str:
        """Move the delivery back: now (a hand-back) or after ``delay_seconds`` (a retry).

        Returns 'done' if the task already has a result (it is dropped, never run again), 'lost'
        if another consumer owns the delivery now, 'retry' when scheduled, else the new entry id.
        """
        keys = self.keys
        reply = await self._requeue(
            keys=[
                delivery.stream,
                self.streams[priority],
                keys.task_index,
                keys.result_index,
                keys.retries,
            ],
            args=[
                CONSUMER_GROUP,
                delivery.entry_id,
                self.consumer,
                task_id,
                envelope,
                -1 if delay_seconds is None else _ms(delay_seconds),
                priority.value,
            ],
        )
        return str(reply)

    async def promote_due(self, limit: int = 500) -> int:
        """Move retries that are due back onto their streams; returns how many were due."""
        keys = self.keys
        moved = await self._promote(
            keys=[keys.retries, keys.task_index, keys.result_index, *self.streams.values()],
            args=[limit, *(p.value for p in self.streams)],
        )
        return int(moved)

    async def guard(self, message_id: str, entry_id: str, ttl: float | None = None) -> str:
        """Remember a signed message id; returns the entry id it first arrived as.

        ``ttl``: seconds to remember it (default: as long as results are kept).
        """
        keys = self.keys
        first = await self.batch.call(
            self._guard,
            [keys.seen, keys.expiry_of(keys.seen)],
            [
                message_id,
                entry_id,
                _ms(self.policy.result_ttl_seconds if ttl is None else ttl),
            ],
        )
        return str(first)

    async def has_result(self, task_id: str) -> bool:
        """Whether the task already has its result."""
        return bool(await self.client.hexists(self.keys.result_index, task_id))

    async def dead_letter(self, delivery: Delivery, letter: DeadLetter, revision: str) -> None:
        """Dead-letter a message that is not a usable task, as ``revision``'s rejection."""
        keys = self.keys
        await self._dead_letter(
            keys=[keys.dead_letters, delivery.stream, keys.counters],
            args=[
                CONSUMER_GROUP,
                delivery.entry_id,
                self.policy.dead_letter_max,
                revision,
                *_flat(letter),
            ],
        )

    async def sweep(self) -> int:
        """Expire results, idempotency ids and replay guards; trim the result stream by age."""
        keys = self.keys
        pairs = [k for h in keys.expiring_hashes for k in (h, keys.expiry_of(h))]
        expired = await self._sweep(
            keys=[keys.result_stream, *pairs],
            args=[_ms(self.policy.result_ttl_seconds), SWEEP_BATCH],
        )
        return int(expired)


def _flat(letter: DeadLetter) -> list[str]:
    flat: list[str] = []
    for name, value in letter.model_dump(mode="json", exclude_none=True).items():
        flat += [name, str(value)]
    return flat


def utc_now() -> dt.datetime:
    """The agent's clock (UTC, aware)."""
    return dt.datetime.now(dt.UTC)
