"""What a failed gateway call tells the task runtime: when to try again, and whether it counted.

HandlerError.retry_after and counts_as_attempt, for each way a call can fail retryably: the circuit
breaker refusing (open, or half-open with its trial running), the call's own retries spent (with
and without a Retry-After, opening the circuit or not), and the fleet rate limiter refusing a slot.
The limiter here is a stand-in that refuses; the real one is tested on Redis
(tests/integration/test_ratelimit_overload.py).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from gateway_stub import RETRY_LATER_SECONDS, FakeClock, RecordingSleep, Reply, stub_gateway
from newfuse.wire.keys import FleetKeys
from newfuse_agent import contract, handlers
from newfuse_agent.contract import HandlerError
from newfuse_agent.gateway import (
    HALF_OPEN_RETRY_SECONDS,
    CircuitState,
    GatewayClient,
    GatewayConfig,
    GatewayOutcome,
    _retry_after_seconds,
)
from newfuse_agent.ratelimit import RateLimitedError, RedisTokenBucket, holes_key

T = TypeVar("T")
HELLO = [{"role": "user", "content": "hello"}]
THRESHOLD = 2
RECOVERY = 10.0


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def config(url: str, **overrides: Any) -> GatewayConfig:
    settings: dict[str, Any] = {
        "endpoint": url,
        "timeout_seconds": 0.3,
        "max_retries": 1,
        "backoff_base_seconds": 0.01,
        "backoff_max_seconds": 1.0,
        "breaker_failure_threshold": THRESHOLD,
        "breaker_recovery_seconds": RECOVERY,
    }
    settings.update(overrides)
    return GatewayConfig(**settings)


async def expect_error(call: Awaitable[Any]) -> HandlerError:
    with pytest.raises(HandlerError) as caught:
        await call
    return caught.value


def outcome_count(outcome: GatewayOutcome) -> float:
    value = REGISTRY.get_sample_value(
        "newfuse_agent_gateway_requests_total", {"outcome": outcome.value}
    )
    return value or 0.0


def test_the_contract_is_what_handlers_export() -> None:
    # The old import path keeps working: handlers re-export the leaf module's objects.
    assert handlers.HandlerError is contract.HandlerError
    assert handlers.TaskContext is contract.TaskContext
    error = HandlerError("x", retryable=True)
    assert (error.retry_after, error.counts_as_attempt) == (None, True), "the defaults"


@pytest.mark.parametrize("retry_after", [-1.0, float("inf"), float("nan")])
def test_handler_error_refuses_a_meaningless_retry_after(retry_after: float) -> None:
    with pytest.raises(ValueError, match="retry_after"):
        HandlerError("x", retryable=True, retry_after=retry_after)


def test_an_open_circuit_says_when_and_that_nothing_was_tried() -> None:
    async def scenario() -> None:
        async with stub_gateway(Reply.SERVER_ERROR) as stub:
            clock = FakeClock()
            client = GatewayClient(config(stub.url), clock=clock, sleep=RecordingSleep())
            try:
                for _ in range(THRESHOLD):
                    await expect_error(client.chat(HELLO))
                assert client.breaker.state is CircuitState.OPEN
                for elapsed in (0.0, 2.5, 9.0):
                    clock.now = 1000.0 + elapsed
                    error = await expect_error(client.chat(HELLO))
                    assert error.retryable
                    assert error.retry_after == pytest.approx(RECOVERY - elapsed)
                    assert error.counts_as_attempt is False
                assert stub.requests == THRESHOLD * 2, "the refusals touched no network"
            finally:
                await client.aclose()

    run(scenario())


def test_a_half_open_circuit_with_its_trial_running_says_come_back_soon() -> None:
    async def scenario() -> None:
        async with stub_gateway(Reply.SERVER_ERROR) as stub:
            clock = FakeClock()
            client = GatewayClient(config(stub.url), clock=clock, sleep=RecordingSleep())
            try:
                for _ in range(THRESHOLD):
                    await expect_error(client.chat(HELLO))
                clock.advance(RECOVERY)
                stub.replies = [Reply.HOLD]
                stub.arrived.clear()
                trial = asyncio.create_task(client.chat(HELLO))
                await asyncio.wait_for(stub.arrived.wait(), 5)
                error = await expect_error(client.chat(HELLO))
                assert error.retry_after == HALF_OPEN_RETRY_SECONDS
                assert error.counts_as_attempt is False
                stub.release.set()
                await trial
            finally:
                await client.aclose()

    run(scenario())


@dataclass(frozen=True)
class Spent:
    """A call whose retries are all spent on ``reply``, after ``earlier`` failed calls."""

    reply: Reply
    earlier: int
    retry_after: float | None


SPENT = {
    "5xx, circuit still closed: no hint": Spent(Reply.SERVER_ERROR, 0, None),
    "429 with Retry-After, circuit closed: the Retry-After": Spent(
        Reply.TOO_MANY_RETRY_AFTER, 0, 0.05
    ),
    "5xx that opens the circuit: its recovery time": Spent(
        Reply.SERVER_ERROR, THRESHOLD - 1, RECOVERY
    ),
    "429 with a short Retry-After that opens the circuit: the recovery time": Spent(
        Reply.TOO_MANY_RETRY_AFTER, THRESHOLD - 1, RECOVERY
    ),
    "429 with a long Retry-After that opens the circuit: the Retry-After": Spent(
        Reply.TOO_MANY_RETRY_LATER, THRESHOLD - 1, RETRY_LATER_SECONDS
    ),
}


@pytest.mark.parametrize("case", SPENT.values(), ids=SPENT.keys())
def test_spent_retries_say_when_to_come_back(case: Spent) -> None:
    async def scenario() -> None:
        async with stub_gateway(case.reply) as stub:
            client = GatewayClient(config(stub.url), clock=FakeClock(), sleep=RecordingSleep())
            try:
                for _ in range(case.earlier):
                    await expect_error(client.chat(HELLO))
                error = await expect_error(client.chat(HELLO))
            finally:
                await client.aclose()
            assert error.retryable
            assert error.counts_as_attempt is True
            if case.retry_after is None:
                assert error.retry_after is None
            else:
                assert error.retry_after == pytest.approx(case.retry_after)

    run(scenario())


def test_the_latest_retry_after_of_the_call_counts_even_if_the_last_attempt_had_none() -> None:
    async def scenario() -> None:
        async with stub_gateway(Reply.TOO_MANY_RETRY_LATER, Reply.SERVER_ERROR) as stub:
            clock = FakeClock()
            client = GatewayClient(config(stub.url), clock=clock, sleep=RecordingSleep())
            try:
                error = await expect_error(client.chat(HELLO))
            finally:
                await client.aclose()
            assert stub.requests == 2
            assert error.retry_after == pytest.approx(RETRY_LATER_SECONDS)

    run(scenario())


RETRY_AFTER_HEADERS = {
    "seconds": ("2.5", 2.5),
    "negative": ("-3", 0.0),
    "infinite": ("inf", None),
    "not a number": ("nan", None),
    "garbage": ("soon", None),
}


@pytest.mark.parametrize(
    ("header", "seconds"), RETRY_AFTER_HEADERS.values(), ids=RETRY_AFTER_HEADERS.keys()
)
def test_retry_after_header(header: str, seconds: float | None) -> None:
    assert _retry_after_seconds(httpx.Response(429, headers={"Retry-After": header})) == seconds


class RefusingLimiter(RedisTokenBucket):
    """The fleet rate limiter with no slot within reach: every acquire is refused."""

    WAIT = 7.5

    def __init__(self) -> None:
        # Never connects: the scripts are only registered, and acquire is replaced.
        super().__init__(aioredis.Redis(), "unused", 1.0)
        self.refused = 0

    async def acquire(self, max_wait: float | None = None) -> float:
        self.refused += 1
        raise RateLimitedError(self.WAIT, self.max_wait)


@pytest.mark.parametrize(
    ("replies", "requests", "counts"),
    [((Reply.OK,), 0, False), ((Reply.SERVER_ERROR, Reply.OK), 1, True)],
    ids=["refused before any request: no attempt", "refused on the retry: an attempt"],
)
def test_a_rate_limit_refusal_is_retryable_with_the_wait(
    replies: tuple[Reply, ...], requests: int, counts: bool
) -> None:
    async def scenario() -> None:
        async with stub_gateway(*replies) as stub:
            client = GatewayClient(config(stub.url), clock=FakeClock(), sleep=RecordingSleep())
            limiter = RefusingLimiter()
            if requests:
                # Let the first attempt through, refuse the retry.
                first = True

                async def acquire(max_wait: float | None = None) -> float:
                    nonlocal first
                    if first:
                        first = False
                        return 0.0
                    return await RefusingLimiter.acquire(limiter, max_wait)

                limiter.acquire = acquire  # type: ignore[method-assign]
            client.limiter = limiter
            before = outcome_count(GatewayOutcome.RATE_LIMITED)
            try:
                error = await expect_error(client.chat(HELLO))
            finally:
                await client.aclose()
            assert stub.requests == requests
            assert error.retryable
            assert error.retry_after == RefusingLimiter.WAIT
            assert error.counts_as_attempt is counts
            assert "rate limit" in str(error)
            assert outcome_count(GatewayOutcome.RATE_LIMITED) - before == 1
            assert client.breaker.consecutive_failures == 0, "says nothing about the gateway"

    run(scenario())


def test_a_trial_refused_by_the_rate_limit_frees_the_trial_slot() -> None:
    async def scenario() -> None:
        async with stub_gateway(Reply.SERVER_ERROR) as stub:
            clock = FakeClock()
            client = GatewayClient(config(stub.url), clock=clock, sleep=RecordingSleep())
            try:
                for _ in range(THRESHOLD):
                    await expect_error(client.chat(HELLO))
                clock.advance(RECOVERY)
                real_limiter, client.limiter = client.limiter, RefusingLimiter()
                error = await expect_error(client.chat(HELLO))
                assert error.retry_after == RefusingLimiter.WAIT, "the limiter, not the breaker"
                client.limiter = real_limiter
                stub.replies = [Reply.OK]
                await client.chat(HELLO)
                assert client.breaker.state is CircuitState.CLOSED
            finally:
                await client.aclose()

    run(scenario())


def test_the_rate_limit_wait_bound_reaches_the_limiter() -> None:
    async def scenario() -> None:
        conn = aioredis.Redis()  # never connected: only the limiter's settings are read
        keys = FleetKeys("ns", "fleet")
        default = GatewayClient(
            GatewayConfig(endpoint="http://gw/v1", rate_limit_per_second=5.0), conn, keys
        )
        short = GatewayClient(
            GatewayConfig(
                endpoint="http://gw/v1",
                rate_limit_per_second=5.0,
                rate_limit_max_wait_seconds=2.0,
            ),
            conn,
            keys,
        )
        try:
            assert default.limiter is not None
            assert short.limiter is not None
            assert default.limiter.max_wait == 30.0, "a gateway request's default timeout"
            assert short.limiter.max_wait == 2.0
        finally:
            for client in (default, short):
                await client.aclose()
            await conn.aclose()

    run(scenario())


@pytest.mark.parametrize("value", [-1.0, float("inf"), float("nan")])
def test_a_meaningless_wait_bound_is_refused(value: float) -> None:
    with pytest.raises(ValueError, match="rate_limit_max_wait_seconds"):
        GatewayConfig(endpoint="http://gw/v1", rate_limit_max_wait_seconds=value)


def test_the_free_slots_key_is_one_of_the_fleets_keys() -> None:
    # Deleting a fleet deletes FleetKeys.all_keys(); the limiter's second key must be among them.
    keys = FleetKeys("ns", "fleet")
    assert holes_key(keys.rate_limit) == keys.rate_limit_holes
    assert keys.rate_limit_holes in keys.all_keys()
