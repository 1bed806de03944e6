"""The model gateway client's circuit breaker, through the client and on its own.

Against the stub gateway on 127.0.0.1 (tests/gateway_stub.py), which counts the requests it gets:
that is how "an open circuit fails fast without touching the network" is checked. The circuit
opens after N failed calls, half-opens after the recovery time for exactly one trial, and the
trial's outcome decides; then the breaker's state machine alone, step by step, on a fake clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable

import pytest
from prometheus_client import REGISTRY

from gateway_calls import HELLO, config, expect_error, outcome_count, run
from gateway_stub import FakeClock, RecordingSleep, Reply, Stub, stub_gateway
from newfuse_agent.gateway import (
    Admission,
    CircuitBreaker,
    CircuitState,
    GatewayClient,
    GatewayConfig,
    GatewayOutcome,
)
from newfuse_agent.handlers import HandlerError


def circuit_gauge() -> float | None:
    return REGISTRY.get_sample_value("newfuse_agent_gateway_circuit_state")


def state_of(client: GatewayClient) -> CircuitState:
    # A function, not the property, so that mypy does not narrow the state across a clock move.
    return client.breaker.state


THRESHOLD = 3
RECOVERY = 10.0


def breaker_config(url: str) -> GatewayConfig:
    return config(
        url,
        max_retries=1,
        breaker_failure_threshold=THRESHOLD,
        breaker_recovery_seconds=RECOVERY,
    )


async def open_circuit(client: GatewayClient, stub: Stub) -> None:
    """Fail THRESHOLD calls (each after its retry); the circuit is then open."""
    for n in range(THRESHOLD):
        assert state_of(client) is CircuitState.CLOSED, f"opened early, after {n} calls"
        error = await expect_error(client.chat(HELLO))
        assert error.retryable
    assert stub.requests == THRESHOLD * 2, "each failed call counts once, after its retries"
    assert state_of(client) is CircuitState.OPEN
    assert circuit_gauge() == 1


def test_circuit_opens_after_n_failed_calls_and_then_fails_fast() -> None:
    async def scenario() -> None:
        async with stub_gateway(Reply.SERVER_ERROR) as stub:
            clock = FakeClock()
            client = GatewayClient(breaker_config(stub.url), clock=clock, sleep=RecordingSleep())
            try:
                await open_circuit(client, stub)
                before = outcome_count(GatewayOutcome.CIRCUIT_OPEN)
                stub.replies = [Reply.OK]  # even a healthy gateway is not asked while open
                for _ in range(5):
                    error = await expect_error(client.chat(HELLO))
                    assert error.retryable
                    assert "circuit is open" in str(error)
                    clock.advance(RECOVERY / 10)
                assert stub.requests == THRESHOLD * 2, "an open circuit never touches the network"
                assert outcome_count(GatewayOutcome.CIRCUIT_OPEN) - before == 5
            finally:
                await client.aclose()

    run(scenario())


TRIALS = {
    "trial success closes": (Reply.OK, CircuitState.CLOSED, 1, 0),
    "trial failure re-opens": (Reply.SERVER_ERROR, CircuitState.OPEN, 2, 1),
    "trial rejected (4xx) closes: the gateway answered": (
        Reply.BAD_REQUEST,
        CircuitState.CLOSED,
        1,
        0,
    ),
}


@pytest.mark.parametrize(
    ("trial_reply", "after", "trial_requests", "gauge"), TRIALS.values(), ids=TRIALS.keys()
)
def test_half_open_trial_decides(
    trial_reply: Reply, after: CircuitState, trial_requests: int, gauge: int
) -> None:
    async def scenario() -> None:
        async with stub_gateway(Reply.SERVER_ERROR) as stub:
            clock = FakeClock()
            client = GatewayClient(breaker_config(stub.url), clock=clock, sleep=RecordingSleep())
            try:
                await open_circuit(client, stub)
                clock.advance(RECOVERY - 0.01)
                assert state_of(client) is CircuitState.OPEN
                clock.advance(0.01)
                assert state_of(client) is CircuitState.HALF_OPEN
                assert circuit_gauge() == 2
                stub.replies = [trial_reply]
                with contextlib.suppress(HandlerError):
                    await client.chat(HELLO)
                assert stub.requests == THRESHOLD * 2 + trial_requests
                assert state_of(client) is after
                assert circuit_gauge() == gauge
                seen = stub.requests
                stub.replies = [Reply.OK]
                if after is CircuitState.OPEN:
                    error = await expect_error(client.chat(HELLO))
                    assert "circuit is open" in str(error)
                    assert stub.requests == seen, "re-opened: fails fast again"
                    clock.advance(RECOVERY)
                await client.chat(HELLO)
                assert state_of(client) is CircuitState.CLOSED
            finally:
                await client.aclose()

    run(scenario())


def test_half_open_lets_only_one_trial_through() -> None:
    async def scenario() -> None:
        async with stub_gateway(Reply.SERVER_ERROR) as stub:
            clock = FakeClock()
            client = GatewayClient(breaker_config(stub.url), clock=clock, sleep=RecordingSleep())
            try:
                await open_circuit(client, stub)
                clock.advance(RECOVERY)
                stub.replies = [Reply.HOLD]
                stub.arrived.clear()
                trial = asyncio.create_task(client.chat(HELLO))
                await asyncio.wait_for(stub.arrived.wait(), 5)
                error = await expect_error(client.chat(HELLO))
                assert "circuit is open" in str(error), "a second call while the trial runs"
                stub.release.set()
                await trial
                assert stub.requests == THRESHOLD * 2 + 1
                assert state_of(client) is CircuitState.CLOSED
            finally:
                await client.aclose()

    run(scenario())


def test_a_cancelled_trial_frees_the_trial_slot() -> None:
    async def scenario() -> None:
        async with stub_gateway(Reply.SERVER_ERROR) as stub:
            clock = FakeClock()
            client = GatewayClient(breaker_config(stub.url), clock=clock, sleep=RecordingSleep())
            try:
                await open_circuit(client, stub)
                clock.advance(RECOVERY)
                stub.replies = [Reply.HOLD, Reply.OK]
                stub.arrived.clear()
                trial = asyncio.create_task(client.chat(HELLO))
                await asyncio.wait_for(stub.arrived.wait(), 5)
                trial.cancel()
                with pytest.raises(asyncio.CancelledError):
                    await trial
                assert state_of(client) is CircuitState.HALF_OPEN
                await client.chat(HELLO)
                assert state_of(client) is CircuitState.CLOSED
            finally:
                await client.aclose()

    run(scenario())


# The breaker on its own. Steps, each followed by the state expected after it:
# Aa / At / A-  admit, expecting ADMITTED / TRIAL / REFUSED;
# F / S / R     a call admitted while closed fails / succeeds / ends without a verdict;
# Ft / St / Rt  the same for the half-open trial;
# T<seconds>    move the clock.
BREAKER_SCRIPTS = {
    "failures below the threshold keep it closed": "Aa closed F closed F closed S closed "
    "F closed F closed",
    "a success resets the count": "F closed F closed S closed F closed F closed F open",
    "open refuses until the recovery time": "F closed F closed F open A- open T9.9 open A- open "
    "T0.1 half_open",
    "one trial at a time": "F closed F closed F open T10 half_open At half_open A- half_open "
    "St closed Aa closed Aa closed",
    "trial failure re-opens for a full recovery time": "F closed F closed F open T10 half_open "
    "At half_open Ft open A- open T9.9 open T0.1 half_open At half_open St closed",
    "a late failure does not extend an open circuit": "F closed F closed F open T5 open F open "
    "T5 half_open",
    "a cancelled trial frees the trial slot": "F closed F closed F open T10 half_open "
    "At half_open A- half_open Rt half_open At half_open",
    "a straggler's release does not free the trial slot": "F closed F closed F open T10 half_open "
    "At half_open R half_open A- half_open",
    "a straggler's late failure re-opens, the trial still counts as running": "F closed F closed "
    "F open T10 half_open At half_open F open T10 half_open A- half_open Rt half_open "
    "At half_open",
}


@pytest.mark.parametrize("script", BREAKER_SCRIPTS.values(), ids=BREAKER_SCRIPTS.keys())
def test_breaker_state_machine(script: str) -> None:
    clock = FakeClock()
    changes: list[CircuitState] = []
    breaker = CircuitBreaker(3, 10.0, clock=clock, on_change=changes.append)
    verdicts: dict[str, Callable[[Admission], None]] = {
        "F": breaker.record_failure,
        "S": breaker.record_success,
        "R": breaker.release,
    }
    admissions = {"Aa": Admission.ADMITTED, "At": Admission.TRIAL, "A-": Admission.REFUSED}
    tokens = script.split()
    for step, expected in zip(tokens[::2], tokens[1::2], strict=True):
        if step in admissions:
            assert breaker.admit() is admissions[step], f"{step} in {script!r}"
        elif step[0] in verdicts:
            verdicts[step[0]](Admission.TRIAL if step.endswith("t") else Admission.ADMITTED)
        else:
            clock.advance(float(step[1:]))
        assert breaker.state is CircuitState(expected), f"after {step} in {script!r}"
    assert all(a != b for a, b in itertools.pairwise(changes)), "one hook call per change"
