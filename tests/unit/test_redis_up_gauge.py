"""`newfuse_redis_up` is the breaker's state at scrape time, not whichever reconcile ran last.

It once followed each fleet's last round trip: one fleet's unreadable key (an error reply, from a
Redis that is up) or a reconcile racing a scrape could show Redis as down.
"""

from __future__ import annotations

import asyncio
from types import SimpleNamespace
from typing import Any, cast
from unittest.mock import AsyncMock

import pytest
from prometheus_client import REGISTRY
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError

from newfuse.adapters.redis_guard import Breaker
from newfuse.config import OperatorConfig
from newfuse.core.rediscircuit import CLOSED
from newfuse.runtime.controller import Controller

pytestmark = pytest.mark.asyncio


def redis_up() -> float | None:
    return REGISTRY.get_sample_value("newfuse_redis_up")


async def call_failing_with(breaker: Breaker, error: Exception) -> None:
    with pytest.raises(type(error)):
        async with breaker.call():
            raise error


async def test_the_gauge_reads_the_breaker_and_ignores_error_replies() -> None:
    breaker = Breaker(hold=60.0)
    store = SimpleNamespace(breaker=breaker, probe=AsyncMock(return_value=True))

    controller = Controller(OperatorConfig(), cast(Any, None), cast(Any, store))
    probing = asyncio.create_task(controller._probe_redis())  # what run() starts
    await asyncio.sleep(0)  # one step of the loop: the gauge is bound
    try:
        assert redis_up() == 1.0
        await call_failing_with(breaker, ResponseError("WRONGTYPE Operation against a key"))
        assert redis_up() == 1.0, "an error reply came from a Redis that is up"
        await call_failing_with(breaker, RedisConnectionError("Connection refused"))
        assert redis_up() == 0.0
        breaker.state = CLOSED  # as after a successful probe
        assert redis_up() == 1.0
    finally:
        probing.cancel()
