"""The model gateway client and the `chat` handler, against a stub gateway on 127.0.0.1.

The stub (tests/gateway_stub.py) is a real HTTP server answering from a script of replies, so
timeouts, retries and the circuit breaker are exercised through httpx as in production; it counts
the requests it gets, which is how "fails fast without touching the network" is checked. No Redis:
rate limit off. Retry hints (retry_after, counts_as_attempt) are in test_gateway_hints.py.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, replace
from typing import Any, TypeVar

import pytest
from prometheus_client import REGISTRY

from gateway_stub import MODEL, USAGE, FakeClock, RecordingSleep, Reply, Stub, stub_gateway
from localcluster.netutil import free_port
from newfuse_agent.gateway import (
    Admission,
    CircuitBreaker,
    CircuitState,
    GatewayClient,
    GatewayConfig,
    GatewayOutcome,
)
from newfuse_agent.handlers import HandlerError, TaskContext, load_builtin_handlers
from newfuse_agent.handlers.chat import NO_GATEWAY_MESSAGE, chat

T = TypeVar("T")

TIMEOUT = 0.3


def config(url: str, **overrides: Any) -> GatewayConfig:
    base = GatewayConfig(
        endpoint=url,
        model=MODEL,
        timeout_seconds=TIMEOUT,
        max_retries=3,
        backoff_base_seconds=0.2,
        backoff_max_seconds=5.0,
        breaker_failure_threshold=100,
        breaker_recovery_seconds=30.0,
    )
    return replace(base, **overrides)


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def outcome_count(outcome: GatewayOutcome) -> float:
    value = REGISTRY.get_sample_value(
        "newfuse_agent_gateway_requests_total", {"outcome": outcome.value}
    )
    return value or 0.0


def circuit_gauge() -> float | None:
    return REGISTRY.get_sample_value("newfuse_agent_gateway_circuit_state")


def state_of(client: GatewayClient) -> CircuitState:
    # A function, not the property, so that mypy does not narrow the state across a clock move.
    return client.breaker.state


async def expect_error(call: Awaitable[Any]) -> HandlerError:
    with pytest.raises(HandlerError) as caught:
        await call
    return caught.value


HELLO = [{"role": "user", "content": "hello"}]


@dataclass(frozen=True)
class Case:
    replies: tuple[Reply, ...]
    requests: int
    error_retryable: bool | None  # None: the call succeeds
    error_text: str = ""


CASES = {
    "success": Case((Reply.OK,), 1, None),
    "500 then success is retried": Case((Reply.SERVER_ERROR, Reply.OK), 2, None),
    "503 twice then success": Case((Reply.UNAVAILABLE, Reply.SERVER_ERROR, Reply.OK), 3, None),
    "429 then success is retried": Case((Reply.TOO_MANY, Reply.OK), 2, None),
    "timeout then success is retried": Case((Reply.SLOW, Reply.OK), 2, None),
    "400 is not retried": Case((Reply.BAD_REQUEST, Reply.OK), 1, False, "HTTP 400"),
    "404 is not retried": Case((Reply.NOT_FOUND, Reply.OK), 1, False, "HTTP 404"),
    "500 until the retries run out": Case((Reply.SERVER_ERROR,), 4, True, "after 4 attempt"),
    "timeouts until the retries run out": Case((Reply.SLOW,), 4, True, "no answer within"),
    "a 200 that is not JSON is not retried": Case((Reply.NOT_JSON,), 1, False, "invalid JSON"),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_retries_only_what_another_attempt_can_fix(case: Case) -> None:
    async def scenario() -> None:
        async with stub_gateway(*case.replies) as stub:
            sleep = RecordingSleep()
            client = GatewayClient(config(stub.url), sleep=sleep)
            before = {o: outcome_count(o) for o in GatewayOutcome}
            try:
                if case.error_retryable is None:
                    answer = await client.chat(HELLO)
                    assert answer["choices"][0]["message"]["content"] == "echo: hello"
                else:
                    error = await expect_error(client.chat(HELLO))
                    assert error.retryable is case.error_retryable
                    assert case.error_text in str(error)
            finally:
                await client.aclose()
            assert stub.requests == case.requests
            retries = case.requests - 1
            assert len(sleep.waits) == retries
            # Full jitter: attempt n waits at most base * 2^(n-1), never more than the cap.
            for n, wait in enumerate(sleep.waits, start=1):
                assert 0 <= wait <= min(5.0, 0.2 * 2 ** (n - 1))
            delta = {o: outcome_count(o) - before[o] for o in GatewayOutcome}
            assert delta == {
                GatewayOutcome.SUCCESS: 1 if case.error_retryable is None else 0,
                GatewayOutcome.RETRY: retries,
                GatewayOutcome.FAILURE: 0 if case.error_retryable is None else 1,
                GatewayOutcome.CIRCUIT_OPEN: 0,
                GatewayOutcome.RATE_LIMITED: 0,
            }

    run(scenario())


def test_retry_after_is_honoured_up_to_the_backoff_cap() -> None:
    async def scenario() -> None:
        async with stub_gateway(Reply.TOO_MANY_RETRY_AFTER, Reply.OK) as stub:
            sleep = RecordingSleep()
            client = GatewayClient(
                config(stub.url, backoff_base_seconds=0.001, backoff_max_seconds=1.0), sleep=sleep
            )
            try:
                await client.chat(HELLO)
            finally:
                await client.aclose()
            assert stub.requests == 2
            assert sleep.waits == [pytest.approx(0.05)]

    run(scenario())


def test_connection_refused_is_retried_then_fails_retryably() -> None:
    async def scenario() -> None:
        sleep = RecordingSleep()
        client = GatewayClient(config(f"http://127.0.0.1:{free_port()}/v1"), sleep=sleep)
        try:
            error = await expect_error(client.chat(HELLO))
        finally:
            await client.aclose()
        assert error.retryable
        assert "cannot reach" in str(error)
        assert len(sleep.waits) == 3

    run(scenario())


def test_request_carries_model_and_api_key() -> None:
    async def scenario() -> None:
        async with stub_gateway(Reply.OK) as stub:
            for cfg in (config(stub.url, api_key="sk-test"), config(stub.url, model=None)):
                client = GatewayClient(cfg)
                try:
                    await client.chat(HELLO)
                finally:
                    await client.aclose()
            assert stub.bodies == [{"model": MODEL, "messages": HELLO}, {"messages": HELLO}]
            assert stub.authorization == ["Bearer sk-test", None]

    run(scenario())


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


INPUTS = {
    "a string": ("hello", [{"role": "user", "content": "hello"}]),
    "a prompt": ({"prompt": "hello"}, [{"role": "user", "content": "hello"}]),
    "messages": (
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
            ]
        },
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    ),
}


def context(gateway: GatewayClient | None) -> TaskContext:
    return TaskContext(
        agent_id="agent-0",
        fleet="fleet",
        namespace="ns",
        revision="rev",
        capabilities=("chat",),
        gateway=gateway,
    )


@pytest.mark.parametrize(("task_input", "messages"), INPUTS.values(), ids=INPUTS.keys())
def test_chat_handler_input_shapes(task_input: Any, messages: list[dict[str, str]]) -> None:
    async def scenario() -> None:
        async with stub_gateway(Reply.OK) as stub:
            client = GatewayClient(config(stub.url))
            try:
                output = await chat(task_input, context(client))
            finally:
                await client.aclose()
            assert stub.bodies == [{"model": MODEL, "messages": messages}]
            assert output == {
                "content": f"echo: {messages[-1]['content']}",
                "model": MODEL,
                "usage": USAGE,
            }

    run(scenario())


BAD_INPUTS: dict[str, Any] = {
    "a number": 42,
    "null": None,
    "an empty object": {},
    "a prompt that is not a string": {"prompt": 3},
    "no messages": {"messages": []},
    "messages not a list": {"messages": "hi"},
    "a message without content": {"messages": [{"role": "user"}]},
    "a message with non-string content": {"messages": [{"role": "user", "content": 1}]},
    "a message that is not an object": {"messages": ["hi"]},
}


@pytest.mark.parametrize("task_input", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_chat_handler_refuses_malformed_input_without_calling(task_input: Any) -> None:
    async def scenario() -> None:
        async with stub_gateway(Reply.OK) as stub:
            client = GatewayClient(config(stub.url))
            try:
                error = await expect_error(chat(task_input, context(client)))
            finally:
                await client.aclose()
            assert not error.retryable
            assert stub.requests == 0

    run(scenario())


def test_chat_handler_without_a_gateway() -> None:
    error = run(expect_error(chat("hello", context(None))))
    assert str(error) == NO_GATEWAY_MESSAGE
    assert not error.retryable


def test_chat_handler_is_registered() -> None:
    assert load_builtin_handlers()["chat"] is chat


ENVS: dict[str, tuple[dict[str, str], GatewayConfig | None]] = {
    "no endpoint: no gateway": ({"NEWFUSE_GATEWAY_MODEL": "m"}, None),
    "endpoint only": (
        {"NEWFUSE_GATEWAY_ENDPOINT": "http://gw/v1"},
        GatewayConfig(endpoint="http://gw/v1"),
    ),
    "everything": (
        {
            "NEWFUSE_GATEWAY_ENDPOINT": "http://gw/v1/",
            "NEWFUSE_GATEWAY_MODEL": "m",
            "NEWFUSE_GATEWAY_API_KEY": "k",
            "NEWFUSE_GATEWAY_TIMEOUT_SECONDS": "7.5",
            "NEWFUSE_GATEWAY_RATE_LIMIT": "20",
        },
        GatewayConfig(
            endpoint="http://gw/v1/",
            model="m",
            api_key="k",
            timeout_seconds=7.5,
            rate_limit_per_second=20.0,
        ),
    ),
}


@pytest.mark.parametrize(("env", "expected"), ENVS.values(), ids=ENVS.keys())
def test_config_from_env(env: dict[str, str], expected: GatewayConfig | None) -> None:
    assert GatewayConfig.from_env(env) == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NEWFUSE_GATEWAY_TIMEOUT_SECONDS", "soon"),
        ("NEWFUSE_GATEWAY_TIMEOUT_SECONDS", "0"),
        ("NEWFUSE_GATEWAY_RATE_LIMIT", "-1"),
        ("NEWFUSE_GATEWAY_RATE_LIMIT", "nan"),
    ],
)
def test_bad_config_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        GatewayConfig.from_env({"NEWFUSE_GATEWAY_ENDPOINT": "http://gw/v1", name: value})


def test_completions_url_and_no_limiter_without_redis() -> None:
    cfg = GatewayConfig(endpoint="http://gw/v1/", rate_limit_per_second=5.0)
    assert cfg.completions_url == "http://gw/v1/chat/completions"

    async def scenario() -> None:
        client = GatewayClient(cfg)
        assert client.limiter is None
        await client.aclose()

    run(scenario())
