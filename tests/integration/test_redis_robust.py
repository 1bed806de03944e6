"""The operator's Redis reads on a real Redis: garbage is skipped, and an outage costs one timeout.

Any agent can write its fleet's hashes, so each read the operator makes of them must be total;
and every call passes the circuit breaker, so Redis that hangs (a socket that accepts and never
answers, the worst case: each command waits out its timeout) is paid for once, not per call.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import socket
import time
import uuid
from collections.abc import Iterator

import pytest
import redis
from prometheus_client import REGISTRY

from harness import RedisHandle
from newfuse.adapters.redis_guard import RedisCircuitOpenError
from newfuse.adapters.redis_store import RedisStore
from newfuse.core.rediscircuit import Circuit
from newfuse.wire.keys import FleetKeys
from newfuse.wire.state import AgentMetrics, AgentState, AgentStatus, StateUpdate

T0 = dt.datetime(2026, 11, 21, tzinfo=dt.UTC)

pytestmark = pytest.mark.asyncio


def update(agent: str, version: int, completed: int = 1) -> StateUpdate:
    return StateUpdate(
        agent_id=agent,
        state=AgentState(
            id=agent,
            status=AgentStatus.ACTIVE,
            revision="r1",
            metrics=AgentMetrics(tasks_completed=completed),
        ),
        version=version,
        timestamp=T0,
    )


def skipped(kind: str) -> float:
    value = REGISTRY.get_sample_value("newfuse_redis_malformed_records_total", {"key": kind})
    return value or 0.0


@pytest.fixture
def keys(redis_server: RedisHandle) -> Iterator[FleetKeys]:
    fleet_keys = FleetKeys("robust", uuid.uuid4().hex[:8])
    yield fleet_keys
    client = redis.Redis.from_url(redis_server.url)
    client.unlink(*fleet_keys.all_keys())
    client.close()


async def test_garbage_in_every_agent_writable_hash_is_skipped_counted_and_logged_once(
    redis_server: RedisHandle, keys: FleetKeys, caplog: pytest.LogCaptureFixture
) -> None:
    raw = redis.Redis.from_url(redis_server.url)  # bytes: it can write what is not UTF-8
    good = update("a-0", 3, completed=7)
    raw.hset(
        keys.agents,
        mapping={
            "a-0": good.to_json(),
            "evil": "{not json",
            "naive": good.to_json().replace("+00:00", "").replace("Z", ""),
            "binary": b"\xff\xfe\x00garbage",
        },
    )
    raw.hset(keys.retired, mapping={"old": update("old", 1).to_json(), "bad": "[]"})
    raw.hset(
        keys.counters,
        mapping={"rev:r1:tasksCompleted": "5", "rev:r1:tasksFailed": "lots", "tasksCompleted": "x"},
    )
    raw.hset(keys.fleet_state, "state", "not a state")
    raw.hset(keys.versions, mapping={"fleet": "NaN-ish", "agent:a-0": "garbage"})
    before = {k: skipped(k) for k in ("agents", "retired", "counters", "fleet")}
    caplog.set_level(logging.WARNING, logger="newfuse.adapters.redis_store")

    async def reads(store: RedisStore) -> None:
        assert [u.agent_id for u in await store.agent_states(keys)] == ["a-0"]
        assert [u.agent_id for u in await store.retired_states(keys)] == ["old"]
        assert await store.revision_counts(keys) == {"r1": (5, 0, 0)}
        assert await store.task_counters(keys) is None
        assert await store.get_fleet_state(keys) is None

    store = RedisStore(redis_server.url)
    try:
        await reads(store)
        first_lines = len(caplog.records)
        await reads(store)
        assert len(caplog.records) == first_lines, "a record that stays bad is not re-logged"
        # A version that is not a number no longer blocks the compare-and-set for ever.
        assert await store.put_fleet_state(keys, update("fleet", 10))
        assert await store.put_agent_state(keys, update("a-0", 4))
        stored = await store.get_fleet_state(keys)
        assert stored is not None
        assert stored.version == 10
        await store.ping()
        assert store.breaker.closed, "bad data is not an outage"
    finally:
        await store.close()
    raw.close()
    assert {k: skipped(k) - v for k, v in before.items()} == {
        "agents": 2 * 3,
        "retired": 2 * 1,
        "counters": 2 * 2,
        "fleet": 2 * 1,
    }
    logged = " ".join(r.getMessage() for r in caplog.records)
    for field in (
        "'evil'",
        "'naive'",
        "'binary'",
        "'bad'",
        "'rev:r1:tasksFailed'",
        "'tasksCompleted'",
        "'state'",
    ):
        assert field in logged, field
    assert keys.namespace in logged


async def test_keys_of_the_wrong_type_read_as_empty(
    redis_server: RedisHandle, keys: FleetKeys
) -> None:
    client = redis.Redis.from_url(redis_server.url)
    for key in (keys.agents, keys.retired, keys.counters, keys.fleet_state):
        client.set(key, "a string, not a hash")
    client.close()

    store = RedisStore(redis_server.url)
    try:
        assert await store.agent_states(keys) == []
        assert await store.retired_states(keys) == []
        assert await store.revision_counts(keys) == {}
        assert await store.task_counters(keys) is None
        assert await store.get_fleet_state(keys) is None
        assert store.breaker.closed
    finally:
        await store.close()


async def test_delete_fleet_unlinks_every_key_by_name(
    redis_server: RedisHandle, keys: FleetKeys
) -> None:
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    for key in keys.all_keys():
        client.set(key, "x")
    other = FleetKeys(keys.namespace, keys.fleet + "-other")
    client.set(other.agents, "x")

    async def scenario() -> int:
        store = RedisStore(redis_server.url)
        try:
            return await store.delete_fleet(keys)
        finally:
            await store.close()

    try:
        assert await scenario() == len(keys.all_keys())
        assert list(client.scan_iter(match=keys.pattern)) == []
        assert client.exists(other.agents) == 1, "another fleet (same prefix) is untouched"
    finally:
        client.unlink(other.agents)
        client.close()


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts connections and never answers (Redis hanging, or a dead route)."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(128)
    yield sock.getsockname()[1]
    sock.close()


async def test_an_outage_costs_one_timeout_then_calls_are_refused_until_a_probe(
    black_hole: int, keys: FleetKeys
) -> None:
    timeout, hold = 1.0, 1.5

    store = RedisStore(f"redis://127.0.0.1:{black_hole}/0", timeout=timeout, backoff=hold)
    took: dict[str, float] = {}
    try:
        started = time.perf_counter()
        with pytest.raises((redis.exceptions.TimeoutError, redis.exceptions.ConnectionError)):
            await store.agent_states(keys)
        took["first call"] = time.perf_counter() - started
        started = time.perf_counter()
        for call in (store.agent_states, store.revision_counts, store.dead_letter_count):
            with pytest.raises(RedisCircuitOpenError, match="Timeout"):
                await call(keys)
        with pytest.raises(RedisCircuitOpenError):
            await store.retire_agents(keys, [update("a", 1)])  # a pipeline
        took["four refused calls"] = time.perf_counter() - started
        assert not await store.probe(), "not due yet: no call"
        await asyncio.sleep(hold)
        started = time.perf_counter()
        assert not await store.probe()
        took["probe"] = time.perf_counter() - started
        with pytest.raises(RedisCircuitOpenError):
            await store.agent_states(keys)
    finally:
        await store.close()
    print(f"black-holed Redis, timeout {timeout}s: {took}")
    assert timeout <= took["first call"] < timeout + 0.5
    assert took["four refused calls"] < 0.05
    assert timeout <= took["probe"] < timeout + 0.5


async def test_the_circuit_closes_when_redis_answers_again(redis_server: RedisHandle) -> None:
    hold = 0.3

    store = RedisStore(redis_server.url, backoff=hold)
    fleet = FleetKeys("robust", "x")
    try:
        store.breaker.state = Circuit(
            open_until=store.breaker.clock() + hold, failures=3, last_error="earlier outage"
        )
        with pytest.raises(RedisCircuitOpenError, match="earlier outage"):
            await store.dead_letter_count(fleet)
        assert not await store.probe(), "not due yet"
        await asyncio.sleep(hold)
        assert await store.probe()
        assert store.breaker.closed
        assert await store.dead_letter_count(fleet) == 0
    finally:
        await store.close()
