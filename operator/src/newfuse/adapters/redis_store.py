"""Redis I/O for the operator: versioned fleet state, agent reports, and fleet key cleanup.

Every call has a short timeout: a Redis outage must show up as a condition, never stall the
reconcile of pods.
"""

from __future__ import annotations

import datetime as dt
import logging
from dataclasses import replace
from typing import cast

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import RedisError, ResponseError

from newfuse.adapters.redis_connect import connect
from newfuse.core.backlog import GroupInfo, StreamObservation, TaskObservation, waiting_of
from newfuse.core.metrics import TaskCounters
from newfuse.wire.envelope import MessageType, encode
from newfuse.wire.keys import FleetKeys
from newfuse.wire.scripts import COUNTER_COMPLETED, COUNTER_DUPLICATES, COUNTER_FAILED
from newfuse.wire.state import STATE_CAS_LUA, StateUpdate
from newfuse.wire.tasks import CONSUMER_GROUP, PRIORITY_ORDER

log = logging.getLogger(__name__)


class RedisStore:
    """The operator's view of Redis."""

    def __init__(
        self,
        url: str,
        timeout: float = 2.0,
        *,
        signing_key: bytes | None = None,
        ca_file: str | None = None,
    ) -> None:
        """Connect lazily to ``url``; each command gives up after ``timeout`` seconds.

        ``signing_key`` signs what the operator publishes to agents (drain notices), which
        agents requiring signatures would otherwise dead-letter.
        """
        self.url = url
        self._signing_key = signing_key
        self._client: aioredis.Redis = connect(
            url, timeout=timeout, pool_wait=timeout, ca_file=ca_file
        )
        self._cas = self._client.register_script(STATE_CAS_LUA)

    async def close(self) -> None:
        """Release the connection pool."""
        await self._client.aclose()

    async def ping(self) -> None:
        """Raise RedisError if Redis does not answer."""
        await self._client.ping()

    async def _put(
        self, data_key: str, versions_key: str, field: str, version_field: str, update: StateUpdate
    ) -> bool:
        stored = await self._cas(
            keys=[data_key, versions_key],
            args=[field, version_field, update.version, update.to_json()],
        )
        return bool(stored)

    async def put_fleet_state(self, keys: FleetKeys, update: StateUpdate) -> bool:
        """Mirror the operator's fleet summary unless a newer version is stored. True if stored."""
        return await self._put(
            keys.fleet_state,
            keys.versions,
            keys.FLEET_STATE_FIELD,
            keys.FLEET_VERSION_FIELD,
            update,
        )

    async def put_agent_state(self, keys: FleetKeys, update: StateUpdate) -> bool:
        """Store an agent's StateUpdate unless a newer version is stored. True if stored."""
        field = update.agent_id
        return await self._put(
            keys.agents, keys.versions, field, keys.agent_version_field(field), update
        )

    async def get_fleet_state(self, keys: FleetKeys) -> StateUpdate | None:
        """The stored fleet summary, if any."""
        raw = await self._client.hget(keys.fleet_state, keys.FLEET_STATE_FIELD)
        return StateUpdate.model_validate_json(cast(str, raw)) if raw else None

    async def agent_states(self, keys: FleetKeys) -> list[StateUpdate]:
        """Every agent's latest StateUpdate; malformed records are logged and skipped."""
        raw = cast(dict[str, str], await self._client.hgetall(keys.agents))
        updates = []
        for agent_id, payload in raw.items():
            try:
                updates.append(StateUpdate.model_validate_json(payload))
            except ValidationError as exc:
                log.warning("ignoring malformed state of agent %s: %s", agent_id, exc.errors()[:1])
        return updates

    async def revision_counts(self, keys: FleetKeys) -> dict[str, tuple[int, int]]:
        """(completed, failed) per revision, as counted by the agents' result step."""
        raw = cast(dict[str, str], await self._client.hgetall(keys.counters))
        counts: dict[str, list[int]] = {}
        for field, value in raw.items():
            parts = field.split(":")
            if len(parts) != 3 or parts[0] != "rev":
                continue
            slot = counts.setdefault(parts[1], [0, 0])
            slot[0 if parts[2] == COUNTER_COMPLETED else 1] += int(value)
        return {rev: (c[0], c[1]) for rev, c in counts.items()}

    async def retire_agents(self, keys: FleetKeys, retiring: list[StateUpdate]) -> None:
        """Move agents' registrations out of the live set, keeping their last counts.

        Retired records are overwritten, never summed, so an agent whose final heartbeat lands
        after it was retired is simply retired again without being counted twice.
        """
        ids = [u.agent_id for u in retiring]
        pipe = self._client.pipeline(transaction=True)
        pipe.hdel(keys.agents, *ids)
        pipe.hdel(keys.versions, *(keys.agent_version_field(a) for a in ids))
        pipe.hset(keys.retired, mapping={u.agent_id: u.to_json() for u in retiring})
        await pipe.execute()

    async def retired_states(self, keys: FleetKeys) -> list[StateUpdate]:
        """The last StateUpdates of retired agents."""
        raw = cast(dict[str, str], await self._client.hgetall(keys.retired))
        return [StateUpdate.model_validate_json(v) for v in raw.values()]

    async def publish_drain(self, keys: FleetKeys, target: str, now: dt.datetime) -> int:
        """Ask the agents matching ``target`` to drain; returns how many heard it."""
        raw = encode(
            MessageType.DRAIN,
            {"target": target},
            "newfuse-operator",
            now=now,
            key=self._signing_key,
        )
        return int(await self._client.publish(keys.coordination_channel, raw))

    async def dead_letter_count(self, keys: FleetKeys) -> int:
        """How many entries the fleet's dead-letter stream holds."""
        return int(await self._client.xlen(keys.dead_letters))

    async def task_observation(self, keys: FleetKeys) -> TaskObservation:
        """What the fleet's task streams and retry set hold: two round trips, no scan.

        Per priority: XLEN and XINFO GROUPS, then XRANGE COUNT 1 for the oldest waiting entry of
        a stream that has one; plus ZCARD of the retry set and Redis' TIME. A stream or group
        that does not exist yet is an empty stream or one without a group.
        """
        streams = [(p.value, keys.tasks(p)) for p in PRIORITY_ORDER]
        pipe = self._client.pipeline(transaction=False)
        for _, stream in streams:
            pipe.xlen(stream)
            pipe.xinfo_groups(stream)
        pipe.zcard(keys.retries)
        pipe.time()
        replies = await pipe.execute(raise_on_error=False)
        observed = []
        for index, (priority, _) in enumerate(streams):
            length, groups = replies[2 * index], replies[2 * index + 1]
            observed.append(StreamObservation(priority, _reply_int(length), _agents_group(groups)))
        retrying, clock = replies[-2], replies[-1]
        if isinstance(clock, Exception):
            raise clock
        pipe = self._client.pipeline(transaction=False)
        asked = []
        for index, seen in enumerate(observed):
            if waiting_of(seen):
                after = "-" if seen.group is None else f"({seen.group.last_delivered_id}"
                pipe.xrange(streams[index][1], after, "+", count=1)
                asked.append(index)
        if asked:
            for index, entries in zip(asked, await pipe.execute(), strict=True):
                if entries:
                    observed[index] = replace(observed[index], first_waiting_id=entries[0][0])
        seconds, micros = clock
        return TaskObservation(
            streams=observed,
            retrying=_reply_int(retrying),
            redis_now_ms=int(seconds) * 1000 + int(micros) // 1000,
        )

    async def task_counters(self, keys: FleetKeys) -> TaskCounters | None:
        """The fleet's task counters (None while it has none, or they are not numbers)."""
        raw = await self._client.hmget(
            keys.counters, [COUNTER_COMPLETED, COUNTER_FAILED, COUNTER_DUPLICATES]
        )
        completed, failed, duplicates = (cast(str | None, v) for v in raw)
        if completed is None and failed is None:
            return None
        try:
            return TaskCounters(int(completed or 0), int(failed or 0), int(duplicates or 0))
        except ValueError:
            log.warning("ignoring malformed task counters of %s/%s", keys.namespace, keys.fleet)
            return None

    async def delete_fleet(self, keys: FleetKeys) -> int:
        """Delete every key of the fleet. Returns how many were deleted."""
        deleted = 0
        batch: list[str] = []
        async for key in self._client.scan_iter(match=keys.pattern, count=500):
            batch.append(key)
            if len(batch) >= 500:
                deleted += await self._client.unlink(*batch)
                batch.clear()
        if batch:
            deleted += await self._client.unlink(*batch)
        return deleted


def _missing(reply: object) -> bool:
    """True if a pipelined reply is Redis saying the key does not exist."""
    return isinstance(reply, ResponseError) and "no such key" in str(reply).lower()


def _reply_int(reply: object) -> int:
    if isinstance(reply, Exception):
        raise reply
    return int(cast(int, reply))


def _agents_group(reply: object) -> GroupInfo | None:
    """The agents' consumer group among a stream's XINFO GROUPS rows (None: no such group)."""
    if _missing(reply):
        return None
    if isinstance(reply, Exception):
        raise reply
    for row in cast(list[dict[str, object]], reply):
        if row.get("name") == CONSUMER_GROUP:
            lag = row.get("lag")
            return GroupInfo(
                pending=int(cast(int, row.get("pending") or 0)),
                lag=None if lag is None else int(cast(int, lag)),
                last_delivered_id=str(row.get("last-delivered-id") or "0-0"),
            )
    return None


__all__ = ["RedisError", "RedisStore"]
