"""Redis I/O for the operator: versioned fleet state, agent reports, and fleet key cleanup.

Every call has a short timeout, and all of them pass one circuit breaker (adapters.redis_guard):
a Redis outage must show up as a condition, never stall the reconcile of pods.

Whatever agents can write is read totally (newfuse.core.untrusted): a malformed record, or a key
of the wrong type, is skipped, counted in newfuse_redis_malformed_records_total and logged (one
line per read with examples, the same line once per LOG_INTERVAL_SECONDS), never failing the read.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import time
from dataclasses import replace
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from pydantic import BaseModel, ValidationError
from redis.exceptions import RedisError, ResponseError

from newfuse import observability as obs
from newfuse.adapters import quarantine, taskgroups
from newfuse.adapters.redis_connect import connect
from newfuse.adapters.redis_guard import Breaker, guard
from newfuse.adapters.state_store import put_state
from newfuse.api.budget import BudgetSpec
from newfuse.core.backlog import GroupInfo, StreamObservation, TaskObservation, waiting_of
from newfuse.core.budget import Usage, parse_usage
from newfuse.core.metrics import TaskCounters
from newfuse.core.untrusted import (
    LogLimiter,
    MalformedRecordError,
    Skipped,
    parse_count,
    parse_revision_counts,
    parse_state_update,
    parse_states,
)
from newfuse.wire import golden, protocol, shadow
from newfuse.wire.delegation import COUNTER_DEADLOCKS
from newfuse.wire.envelope import MessageType, encode
from newfuse.wire.golden import GoldenOutput, GoldenRun
from newfuse.wire.keys import FleetKeys
from newfuse.wire.scripts import COUNTER_COMPLETED, COUNTER_DUPLICATES, COUNTER_FAILED
from newfuse.wire.shadow import ShadowCase, ShadowConfig
from newfuse.wire.signing import Channel, Signer, Signing
from newfuse.wire.state import FleetSummary, StateUpdate
from newfuse.wire.tasks import CONSUMER_GROUP, PRIORITY_ORDER
from newfuse.wire.usage import HARD_COST, HARD_TOKENS, SECONDS_PER_DAY

log = logging.getLogger(__name__)
MAX_EXAMPLES = 3  # skipped records named in one log line


class RedisStore:
    """The operator's view of Redis."""

    def __init__(
        self,
        url: str,
        timeout: float = 2.0,
        *,
        signing_key: bytes | None = None,
        ca_file: str | None = None,
        backoff: float = 5.0,
    ) -> None:
        """Connect lazily to ``url``; each command gives up after ``timeout`` seconds.

        ``signing_key`` signs what the operator publishes to agents (drain notices), which
        agents requiring signatures would otherwise dead-letter. After a command fails to reach
        Redis, commands are refused for ``backoff`` seconds, then `probe` tries again.
        """
        self.url = url
        self._signer = Signing.shared(signing_key).signer
        # Fleets with a key of their own (spec.signing, or one the operator made): their agents
        # accept only it, so what the operator sends them is signed with it.
        self.fleet_signers: dict[FleetKeys, Signer] = {}
        self.breaker = Breaker(backoff)
        # "replace": bytes that are not UTF-8 in an agent-written value make that record
        # malformed (skipped), not the whole read.
        plain = connect(
            url, timeout=timeout, pool_wait=timeout, ca_file=ca_file, encoding_errors="replace"
        )
        self._client: aioredis.Redis = guard(plain, self.breaker)
        self._plain = plain  # the same pool without the breaker, for the probe
        self._complaints = LogLimiter()

    async def close(self) -> None:
        """Release the connection pool."""
        await self._client.aclose()

    async def ping(self) -> None:
        """Raise RedisError if Redis does not answer."""
        await self._client.ping()

    async def probe(self) -> bool:
        """Ping Redis if the open circuit's probe is due; True if Redis is (believed) reachable."""
        if self.breaker.seconds_to_probe() == 0:
            try:
                async with self.breaker.call(probe=True):
                    await self._plain.ping()
            except (RedisError, OSError):
                return False
        return self.breaker.closed

    def _skipped(self, keys: FleetKeys, kind: str, skipped: list[Skipped]) -> None:
        """Count skipped records; log them in one line, unless the same was logged recently.

        One line per read (with a few examples), so a hash full of garbage cannot flood the log.
        """
        if not skipped:
            return
        obs.REDIS_MALFORMED_RECORDS.labels(kind).inc(len(skipped))
        examples = sorted(skipped, key=lambda item: item.field)[:MAX_EXAMPLES]
        seen = (keys.prefix, kind, tuple(item.field for item in examples))
        repeats = self._complaints.admit(seen, time.monotonic())
        if repeats is None:
            return
        more = len(skipped) - len(examples)
        log.warning(
            "skipping %d malformed %s record(s) of %s/%s: %s%s%s",
            len(skipped),
            kind,
            keys.namespace,
            keys.fleet,
            "; ".join(f"{item.field[:100]!r}: {item.reason}" for item in examples),
            f" (and {more} more)" if more else "",
            f" (also seen {repeats} time(s) since last logged)" if repeats else "",
            extra={"namespace": keys.namespace, "fleet": keys.fleet},
        )

    async def _hash(self, keys: FleetKeys, key: str, kind: str) -> dict[str, str]:
        """HGETALL of an agent-writable hash; a key of another type reads as empty (skipped)."""
        try:
            return cast(dict[str, str], await self._client.hgetall(key))
        except ResponseError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise
            self._skipped(keys, kind, [Skipped("*", f"{key} is not a hash")])
            return {}

    async def put_fleet_state(self, keys: FleetKeys, update: StateUpdate) -> bool:
        """Mirror the operator's fleet summary unless a newer version is stored. True if stored."""
        return await put_state(self._client, keys, update, fleet=True)

    async def put_fleet_summary(self, keys: FleetKeys, summary: FleetSummary) -> None:
        """Store the fleet's FleetSummary (only the leader writes), and settle its memory to it."""
        await self._client.hset(keys.fleet_state, keys.FLEET_SUMMARY_FIELD, summary.to_json())
        await quarantine.settle(self._client, keys, summary)
        await taskgroups.ensure_without_agents(self._client, keys, summary.replicas)

    async def put_agent_state(self, keys: FleetKeys, update: StateUpdate) -> bool:
        """Store an agent's StateUpdate unless a newer version is stored. True if stored."""
        return await put_state(self._client, keys, update)

    async def get_fleet_state(self, keys: FleetKeys) -> StateUpdate | None:
        """The stored fleet summary, if any (a malformed one is skipped: None)."""
        kind = "fleet"
        try:
            raw = await self._client.hget(keys.fleet_state, keys.FLEET_STATE_FIELD)
        except ResponseError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise
            self._skipped(keys, kind, [Skipped("*", f"{keys.fleet_state} is not a hash")])
            return None
        if not raw:
            return None
        try:
            return parse_state_update(cast(str, raw))
        except MalformedRecordError as exc:
            self._skipped(keys, kind, [Skipped(keys.FLEET_STATE_FIELD, str(exc))])
            return None

    async def agent_states(self, keys: FleetKeys) -> list[StateUpdate]:
        """Every agent's latest StateUpdate; malformed records are skipped."""
        updates, skipped = parse_states(await self._hash(keys, keys.agents, "agents"))
        self._skipped(keys, "agents", skipped)
        return updates

    async def revision_counts(self, keys: FleetKeys) -> dict[str, tuple[int, int, int]]:
        """(completed, failed, rejected) per revision, as the agents counted them."""
        counts, skipped = parse_revision_counts(await self._hash(keys, keys.counters, "counters"))
        self._skipped(keys, "counters", skipped)
        return counts

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
        """The last StateUpdates of retired agents; malformed records are skipped."""
        updates, skipped = parse_states(await self._hash(keys, keys.retired, "retired"))
        self._skipped(keys, "retired", skipped)
        return updates

    async def publish_drain(self, keys: FleetKeys, target: str, now: dt.datetime) -> int:
        """Ask the agents matching ``target`` to drain; returns how many heard it."""
        raw = encode(
            MessageType.DRAIN,
            {"target": target},
            "newfuse-operator",
            now=now,
            audience=keys.audience(Channel.COORDINATION),
            signer=self.fleet_signers.get(keys, self._signer),
        )
        return int(await self._client.publish(keys.coordination_channel, raw))

    async def publish_shadow(self, keys: FleetKeys, config: ShadowConfig) -> None:
        """Make ``config`` the fleet's shadow run; the same run again changes nothing."""
        run = [keys.shadow, keys.shadow_cases, keys.shadow_outputs, keys.shadow_claims]
        await self._client.eval(shadow.PUBLISH_LUA, 4, *run, config.id, config.model_dump_json())

    async def shadow_outputs(
        self, keys: FleetKeys
    ) -> tuple[str | None, dict[str, ShadowCase], dict[str, GoldenOutput]]:
        """The current shadow run's id, copies and canary answers; malformed ones skipped."""
        current = await self._client.hget(keys.shadow, "id")
        cases = _models(await self._client.hgetall(keys.shadow_cases), ShadowCase)
        outputs = _models(await self._client.hgetall(keys.shadow_outputs), GoldenOutput)
        return (None if current is None else str(current)), cases, outputs

    async def usage(self, keys: FleetKeys) -> Usage:
        """Tokens and cost per revision and today (by Redis' clock); malformed fields skipped."""
        seconds, _ = await self._client.time()
        raw = await self._client.hgetall(keys.usage)
        return parse_usage({str(k): str(v) for k, v in raw.items()}, seconds // SECONDS_PER_DAY)

    async def protocol_seen(self, keys: FleetKeys) -> dict[int, float]:
        """Protocol major -> seconds since a task of it was last seen (by Redis' clock)."""
        return protocol.ages(await self._client.eval(protocol.SEEN_LUA, 1, keys.protocol))

    async def put_budget(self, keys: FleetKeys, budget: BudgetSpec | None) -> None:
        """Mirror the hard limits the submission scripts check; without any, remove them."""
        limits = {HARD_COST: budget.hard_cost, HARD_TOKENS: budget.hard_tokens} if budget else {}
        kept = {k: f"{v:g}" for k, v in limits.items() if v is not None}
        if not kept:
            await self._client.delete(keys.budget)
            return
        pipe = self._client.pipeline(transaction=True)
        pipe.delete(keys.budget)
        pipe.hset(keys.budget, mapping=cast(Any, kept))
        await pipe.execute()

    async def publish_golden(self, keys: FleetKeys, run: GoldenRun) -> None:
        """Make ``run`` the fleet's golden run; the same run again changes nothing."""
        await self._client.eval(
            golden.PUBLISH_LUA,
            3,
            keys.golden,
            keys.golden_outputs,
            keys.golden_claims,
            run.id,
            run.model_dump_json(),
        )

    async def golden_outputs(self, keys: FleetKeys) -> tuple[str | None, dict[str, GoldenOutput]]:
        """The current golden run's id and its outputs; malformed ones are skipped."""
        current = await self._client.hget(keys.golden, "id")
        outputs = _models(await self._client.hgetall(keys.golden_outputs), GoldenOutput)
        return (None if current is None else str(current)), outputs

    async def set_acl_user(self, user: str, rules: list[str]) -> None:
        """Create or redefine the ACL user ``user`` with ``rules`` (ACL SETUSER)."""
        await self._client.execute_command("ACL", "SETUSER", user, *rules)  # type: ignore[no-untyped-call]

    async def delete_acl_user(self, user: str) -> None:
        """Remove the ACL user ``user`` (no error if it is gone)."""
        await self._client.execute_command("ACL", "DELUSER", user)  # type: ignore[no-untyped-call]

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
        names = [COUNTER_COMPLETED, COUNTER_FAILED, COUNTER_DUPLICATES, COUNTER_DEADLOCKS]
        try:
            raw = [cast(str | None, v) for v in await self._client.hmget(keys.counters, names)]
        except ResponseError as exc:
            if not str(exc).startswith("WRONGTYPE"):
                raise
            self._skipped(keys, "counters", [Skipped("*", f"{keys.counters} is not a hash")])
            return None
        if raw[0] is None and raw[1] is None:
            return None
        counts = [0 if v is None else parse_count(v) for v in raw]
        bad = [
            Skipped(n, f"{v[:40]!r} is not a count")
            for n, v, c in zip(names, raw, counts, strict=True)
            if v is not None and c is None
        ]
        if bad:
            self._skipped(keys, "counters", bad)
            return None
        completed, failed, duplicates, deadlocks = (c or 0 for c in counts)
        return TaskCounters(completed, failed, duplicates, deadlocks)

    async def delete_fleet(self, keys: FleetKeys) -> int:
        """Delete every key of the fleet: one UNLINK of the names in `FleetKeys.all_keys()`.

        No SCAN: its cost grows with the whole keyspace, and the set of a fleet's keys is closed.
        All share one hash tag, so this is one slot on Redis Cluster too. Returns how many existed.
        """
        return int(await self._client.unlink(*keys.all_keys()))


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


M = TypeVar("M", bound=BaseModel)


def _models(raw: dict[Any, Any], model: type[M]) -> dict[str, M]:
    """Agent-written JSON records by field, read totally: a malformed one is skipped."""
    found = {}
    for name, value in raw.items():
        with contextlib.suppress(ValidationError):
            found[str(name)] = model.model_validate_json(value)
    return found
