"""The fleet-wide gateway rate limit on the real Redis: two agents share one token bucket.

Each "agent" has its own Redis connection and its own limiter (or gateway client), as two pods
would; they hammer the same fleet key concurrently for a bounded time. The bucket starts full, so
the first `capacity` grants are a burst; the rate is measured over the grants after it.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import redis
import redis.asyncio as aioredis
from aiohttp import web
from aiohttp.test_utils import TestServer

from harness import RedisHandle
from newfuse.wire.keys import FleetKeys
from newfuse_agent.contract import HandlerError
from newfuse_agent.gateway import GatewayClient, GatewayConfig
from newfuse_agent.ratelimit import RedisTokenBucket

RATE = 20.0
CAPACITY = int(max(1.0, RATE))
DURATION = 3.0
WORKERS_PER_AGENT = 4
AGENTS = ("agent-a", "agent-b")
# Each worker's loop is bounded by count as well as by time, so a broken limiter cannot spin.
MAX_LOOPS = int(RATE * DURATION * 2)
TOLERANCE = 0.10
# A grant is timed on the client after its sleep, so it can only be late; this much early is
# allowed for the first grant's own round trip, which the measurement starts from.
EARLY_SLACK_SECONDS = 0.05


@dataclass(frozen=True)
class Grant:
    agent: str
    at: float


@dataclass(frozen=True)
class Run:
    grants: list[Grant]
    ttl_ms: int

    @property
    def times(self) -> list[float]:
        return sorted(g.at for g in self.grants)


def steady_rate(times: list[float]) -> float:
    """Grants per second after the initial burst of CAPACITY tokens."""
    steady = times[CAPACITY:]
    assert len(steady) > RATE, f"too few grants after the burst to measure: {len(steady)}"
    return (len(steady) - 1) / (steady[-1] - steady[0])


async def hammer(url: str, key: str) -> Run:
    clients = [aioredis.Redis.from_url(url) for _ in AGENTS]
    buckets = [RedisTokenBucket(client, key, RATE) for client in clients]
    grants: list[Grant] = []
    deadline = time.monotonic() + DURATION

    async def worker(agent: str, bucket: RedisTokenBucket) -> None:
        for _ in range(MAX_LOOPS):
            if time.monotonic() >= deadline:
                return
            await bucket.acquire()
            grants.append(Grant(agent, time.monotonic()))

    try:
        await asyncio.gather(
            *(
                worker(agent, bucket)
                for agent, bucket in zip(AGENTS, buckets, strict=True)
                for _ in range(WORKERS_PER_AGENT)
            )
        )
        ttl_ms = int(await clients[0].pttl(key))
    finally:
        for client in clients:
            await client.aclose()
    return Run(grants, ttl_ms)


@pytest.fixture(scope="module")
def shared_bucket_run(redis_server: RedisHandle) -> Iterator[Run]:
    """One bounded run of two agents on one fleet's bucket, shared by the tests below."""
    keys = FleetKeys("ratelimit", uuid.uuid4().hex[:8])
    conn = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        yield asyncio.run(hammer(redis_server.url, keys.rate_limit))
    finally:
        conn.delete(keys.rate_limit, keys.rate_limit_holes)
        assert not list(conn.scan_iter(match=keys.pattern)), "keys left behind"
        conn.close()


def test_two_agents_together_get_the_fleet_rate(shared_bucket_run: Run) -> None:
    rate = steady_rate(shared_bucket_run.times)
    print(f"measured steady-state rate: {rate:.2f}/s (limit {RATE:g}/s)")
    assert abs(rate - RATE) <= TOLERANCE * RATE, f"measured {rate:.2f}/s, limit {RATE:g}/s"


def test_the_limit_is_never_exceeded(shared_bucket_run: Run) -> None:
    # The bucket starts full: grant k (0-based) may come no sooner than (k - CAPACITY + 1) / RATE
    # after the first one.
    times = shared_bucket_run.times
    first = times[0]
    for k, at in enumerate(times):
        earliest = max(0.0, (k - CAPACITY + 1) / RATE)
        assert at - first >= earliest - EARLY_SLACK_SECONDS, (
            f"grant {k} at +{at - first:.3f}s, before its token at +{earliest:.3f}s"
        )


def test_neither_agent_is_starved(shared_bucket_run: Run) -> None:
    per_agent = Counter(g.agent for g in shared_bucket_run.grants)
    total = sum(per_agent.values())
    print(f"grants per agent: {dict(per_agent)}")
    for agent in AGENTS:
        assert per_agent[agent] >= 0.3 * total, f"{agent} got {per_agent[agent]} of {total}"


def test_the_bucket_key_expires_on_its_own(shared_bucket_run: Run) -> None:
    # Once full again the key is useless, so it carries a TTL of about the time to refill: at
    # worst from one reservation per worker in debt, plus a second.
    longest_refill_ms = (CAPACITY + WORKERS_PER_AGENT * len(AGENTS)) / RATE * 1000 + 1000
    assert 0 < shared_bucket_run.ttl_ms <= longest_refill_ms


GATEWAY_RATE = 20.0
GATEWAY_DURATION = 3.0
# Enough callers to take the whole initial burst at once, so it does not blur into the steady rate.
CALLERS_PER_AGENT = 12


@pytest.mark.asyncio
async def test_gateway_clients_share_the_limit(redis_server: RedisHandle) -> None:
    """Two agents' GatewayClients, each with its own Redis connection, against one stub."""
    arrivals: list[tuple[str, float]] = []

    async def completions(request: web.Request) -> web.Response:
        body = await request.json()
        arrivals.append((body["messages"][0]["content"], time.monotonic()))
        return web.json_response(
            {"model": "stub", "choices": [{"message": {"role": "assistant", "content": "ok"}}]}
        )

    async def scenario(keys: FleetKeys) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", completions)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        config = GatewayConfig(
            endpoint=str(server.make_url("/v1")),
            timeout_seconds=5.0,
            rate_limit_per_second=GATEWAY_RATE,
        )
        clients: list[tuple[aioredis.Redis, GatewayClient]] = []
        for _ in AGENTS:
            conn = aioredis.Redis.from_url(redis_server.url)
            clients.append((conn, GatewayClient(config, redis=conn, keys=keys)))
        deadline = time.monotonic() + GATEWAY_DURATION

        async def caller(agent: str, client: GatewayClient) -> int:
            done = 0
            for _ in range(int(GATEWAY_RATE * GATEWAY_DURATION * 2)):
                if time.monotonic() >= deadline:
                    break
                answer: dict[str, Any] = await client.chat([{"role": "user", "content": agent}])
                assert answer["choices"][0]["message"]["content"] == "ok"
                done += 1
            return done

        try:
            await asyncio.gather(
                *(
                    caller(agent, client)
                    for agent, (_, client) in zip(AGENTS, clients, strict=True)
                    for _ in range(CALLERS_PER_AGENT)
                )
            )
        finally:
            for conn, client in clients:
                await client.aclose()
                await conn.aclose()
            await server.close()

    keys = FleetKeys("ratelimit", uuid.uuid4().hex[:8])
    conn = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        await scenario(keys)
    finally:
        conn.delete(keys.rate_limit, keys.rate_limit_holes)
        conn.close()
    # Through HTTP, the stub and every caller share one event loop, so arrival times bunch; the
    # steady rate itself is measured on the bucket (test_two_agents_together_get_the_fleet_rate).
    # What must hold end to end is the bound: no more requests than the shared bucket allows.
    times = sorted(at for _, at in arrivals)
    elapsed = times[-1] - times[0]
    allowed = max(1.0, GATEWAY_RATE) + GATEWAY_RATE * elapsed
    print(f"{len(times)} requests at the stub in {elapsed:.2f}s; the bucket allows {allowed:.0f}")
    assert len(times) <= allowed * (1 + TOLERANCE), f"{len(times)} requests, at most {allowed:.0f}"
    assert len(times) >= GATEWAY_RATE * GATEWAY_DURATION * 0.5, (
        "the limited callers still made progress"
    )
    per_agent = Counter(agent for agent, _ in arrivals)
    assert all(per_agent[agent] >= 0.3 * len(arrivals) for agent in AGENTS), dict(per_agent)


@pytest.mark.asyncio
async def test_a_call_with_no_slot_within_its_max_wait_fails_retryably_at_once(
    redis_server: RedisHandle,
) -> None:
    """The gateway turns the limiter's refusal into a retryable HandlerError that was no attempt."""
    requests: list[float] = []

    async def completions(request: web.Request) -> web.Response:
        requests.append(time.monotonic())
        return web.json_response({"choices": [{"message": {"role": "assistant", "content": "ok"}}]})

    async def scenario(keys: FleetKeys) -> HandlerError:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", completions)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        conn = aioredis.Redis.from_url(redis_server.url)
        config = GatewayConfig(
            endpoint=str(server.make_url("/v1")),
            rate_limit_per_second=RATE,
            rate_limit_max_wait_seconds=0.5,
        )
        client = GatewayClient(config, redis=conn, keys=keys)
        try:
            # Another agent holds the burst and the next two seconds of slots.
            other = RedisTokenBucket(conn, keys.rate_limit, RATE)
            for _ in range(CAPACITY + int(2 * RATE)):
                await other.reserve(max_wait=5.0)
            with pytest.raises(HandlerError) as caught:
                await client.chat([{"role": "user", "content": "hi"}])
            return caught.value
        finally:
            await client.aclose()
            await conn.aclose()
            await server.close()

    keys = FleetKeys("ratelimit", uuid.uuid4().hex[:8])
    conn = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        error = await scenario(keys)
    finally:
        conn.delete(keys.rate_limit, keys.rate_limit_holes)
        conn.close()
    assert error.retryable
    assert error.counts_as_attempt is False
    assert error.retry_after is not None
    assert 0.5 < error.retry_after <= 2.0 + 1 / RATE
    assert requests == [], "refused without touching the gateway"
