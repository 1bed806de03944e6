"""The model gateway client's retries, against a stub gateway on 127.0.0.1.

The stub (tests/gateway_stub.py) is a real HTTP server answering from a script of replies, so
timeouts and retries are exercised through httpx as in production; it counts the requests it
gets. Only what another attempt can fix is retried, with full-jitter backoff and Retry-After up to
the cap; the request carries the model and the API key. No Redis: rate limit off. The circuit
breaker is in test_gateway_breaker.py, retry hints in test_gateway_hints.py.
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from gateway_calls import HELLO, config, expect_error, outcome_count, run
from gateway_stub import MODEL, RecordingSleep, Reply, stub_gateway
from localcluster.netutil import free_port
from newfuse_agent.gateway import GatewayClient, GatewayOutcome


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
