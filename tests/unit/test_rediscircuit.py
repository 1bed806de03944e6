"""The Redis circuit breaker: table of its decisions, and the breaker wrapped around real calls."""

from __future__ import annotations

import asyncio

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from newfuse.adapters.redis_guard import Breaker, RedisCircuitOpenError
from newfuse.core.rediscircuit import (
    CLOSED,
    Admission,
    Circuit,
    admit,
    failed,
    probe_started,
    seconds_to_probe,
    succeeded,
)

OPEN = Circuit(open_until=10.0, failures=1, last_error="ConnectionError: refused")


@pytest.mark.parametrize(
    ("circuit", "now", "expected"),
    [
        (CLOSED, 0.0, Admission.CALL),
        (OPEN, 5.0, Admission.REFUSE),
        (OPEN, 9.999, Admission.REFUSE),
        (OPEN, 10.0, Admission.PROBE),
        (OPEN, 99.0, Admission.PROBE),
        (probe_started(OPEN), 99.0, Admission.REFUSE),
    ],
    ids=["closed", "held", "just before", "hold over", "long after", "probe in flight"],
)
def test_admit(circuit: Circuit, now: float, expected: Admission) -> None:
    assert admit(circuit, now) is expected


@pytest.mark.parametrize(
    ("circuit", "now", "expected"),
    [(CLOSED, 0.0, Admission.CALL), (OPEN, 5.0, Admission.REFUSE), (OPEN, 99.0, Admission.REFUSE)],
    ids=["closed: calls go", "held", "hold over: the background prober probes, not this call"],
)
def test_admit_when_another_caller_probes(
    circuit: Circuit, now: float, expected: Admission
) -> None:
    assert admit(circuit, now, may_probe=False) is expected


def test_a_failure_opens_for_the_hold_and_counts() -> None:
    first = failed(CLOSED, 100.0, "TimeoutError: slow", hold=5.0)
    assert (first.open_until, first.failures, first.probing) == (105.0, 1, False)
    assert first.last_error == "TimeoutError: slow"
    again = failed(probe_started(first), 105.5, "TimeoutError: slow", hold=5.0)
    assert (again.open_until, again.failures, again.probing) == (110.5, 2, False)


def test_a_success_closes() -> None:
    assert succeeded(probe_started(OPEN)) == CLOSED
    assert succeeded(CLOSED).closed


@pytest.mark.parametrize(
    ("circuit", "now", "expected"),
    [(CLOSED, 0.0, None), (OPEN, 4.0, 6.0), (OPEN, 12.0, 0.0), (probe_started(OPEN), 12.0, None)],
)
def test_seconds_to_probe(circuit: Circuit, now: float, expected: float | None) -> None:
    assert seconds_to_probe(circuit, now) == expected


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def _call(breaker: Breaker, outcome: BaseException | None) -> None:
    async with breaker.call():
        if outcome is not None:
            raise outcome


@pytest.mark.asyncio
async def test_breaker_refuses_without_calling_then_probes_once_and_closes() -> None:
    clock = Clock()
    breaker = Breaker(hold=5.0, clock=clock)

    with pytest.raises(RedisTimeoutError):
        await _call(breaker, RedisTimeoutError("Timeout reading"))
    assert breaker.seconds_to_probe() == 5.0
    # While open: refused at once, with the cause in the message, and the body never runs.
    ran = False
    with pytest.raises(RedisCircuitOpenError, match="Timeout reading"):
        async with breaker.call():
            ran = True
    assert not ran
    clock.now += 5.0
    assert breaker.seconds_to_probe() == 0.0
    # The probe is in flight: everybody else is still refused.
    probe = breaker.call()
    await probe.__aenter__()
    with pytest.raises(RedisCircuitOpenError):
        await _call(breaker, None)
    await probe.__aexit__(None, None, None)
    assert breaker.seconds_to_probe() is None, "closed"
    await _call(breaker, None)


@pytest.mark.parametrize(
    ("error", "opens"),
    [
        (RedisConnectionError("refused"), True),
        (RedisTimeoutError("slow"), True),
        (OSError("unreachable"), True),
        (ResponseError("WRONGTYPE Operation against a key holding the wrong kind of value"), False),
        (ValueError("a bug in the caller"), False),
    ],
    ids=["connection", "timeout", "os", "redis answered with an error", "not Redis at all"],
)
@pytest.mark.asyncio
async def test_only_failures_to_reach_redis_open_the_circuit(error: Exception, opens: bool) -> None:
    breaker = Breaker(hold=5.0, clock=Clock())

    with pytest.raises(type(error)):
        await _call(breaker, error)
    assert breaker.closed is not opens


@pytest.mark.asyncio
async def test_with_a_background_prober_ordinary_calls_never_probe() -> None:
    clock = Clock()
    breaker = Breaker(hold=1.0, clock=clock)
    breaker.background_probe = True

    with pytest.raises(RedisConnectionError):
        await _call(breaker, RedisConnectionError("refused"))
    clock.now += 10.0
    with pytest.raises(RedisCircuitOpenError):
        await _call(breaker, None)
    async with breaker.call(probe=True):
        pass
    await _call(breaker, None)


@pytest.mark.asyncio
async def test_an_error_reply_closes_the_probe_and_a_cancelled_one_lets_the_next_probe() -> None:
    clock = Clock()
    breaker = Breaker(hold=1.0, clock=clock)

    with pytest.raises(RedisConnectionError):
        await _call(breaker, RedisConnectionError("refused"))
    clock.now += 1.0
    with pytest.raises(asyncio.CancelledError):
        await _call(breaker, asyncio.CancelledError())
    assert breaker.seconds_to_probe() == 0.0, "a cancelled probe proved nothing"
    with pytest.raises(ResponseError):
        await _call(breaker, ResponseError("NOSCRIPT"))
    assert breaker.closed
