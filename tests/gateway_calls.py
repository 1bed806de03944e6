"""What the gateway client's tests share: a client config pointed at the stub, and its metrics.

The stub itself (a real HTTP server on 127.0.0.1, a fake clock and sleep) is gateway_stub.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Coroutine
from dataclasses import replace
from typing import Any, TypeVar

import pytest
from prometheus_client import REGISTRY

from gateway_stub import MODEL
from newfuse_agent.gateway import GatewayConfig, GatewayOutcome
from newfuse_agent.handlers import HandlerError

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


async def expect_error(call: Awaitable[Any]) -> HandlerError:
    with pytest.raises(HandlerError) as caught:
        await call
    return caught.value


HELLO = [{"role": "user", "content": "hello"}]
