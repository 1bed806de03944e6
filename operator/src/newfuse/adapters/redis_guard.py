"""Every Redis command of the operator passes one circuit breaker (newfuse.core.rediscircuit).

The breaker sits under the RedisStore methods, in the client itself: single commands, scripts and
pipelines all go through `execute_command` or `Pipeline.execute`, so a method added to the store
later is covered without remembering to. While the circuit is open a command fails at once with
RedisCircuitOpenError, a redis ConnectionError, so every caller's existing `except RedisError`
handling (report Redis as unreachable, go on with pod work) applies unchanged.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

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

log = logging.getLogger("newfuse.redis")

# Failures to reach Redis. A reply that is an error (ResponseError: bad data, a wrong key type)
# came from a Redis that is up, and must not open the circuit.
UNREACHABLE = (RedisConnectionError, RedisTimeoutError, OSError)


class RedisCircuitOpenError(RedisConnectionError):
    """Refused without calling Redis: the circuit is open after failed calls."""


class Breaker:
    """The circuit's state for one Redis client, with the clock and hold time it needs."""

    def __init__(self, hold: float, clock: Callable[[], float] = time.monotonic) -> None:
        """Refuse calls for ``hold`` seconds after a call fails to reach Redis."""
        self.hold = hold
        self.clock = clock
        self.state: Circuit = CLOSED
        # True while a background prober runs: then ordinary calls never probe.
        self.background_probe = False

    @property
    def closed(self) -> bool:
        """True while calls go to Redis."""
        return self.state.closed

    def seconds_to_probe(self) -> float | None:
        """How long until the next probe is due (None: closed, or a probe is in flight)."""
        return seconds_to_probe(self.state, self.clock())

    @contextlib.asynccontextmanager
    async def call(self, *, probe: bool = False) -> AsyncIterator[None]:
        """Admit one call (or refuse it with RedisCircuitOpenError) and record how it went.

        ``probe``: this call is the background prober's.
        """
        admission = admit(self.state, self.clock(), may_probe=probe or not self.background_probe)
        if admission is Admission.REFUSE:
            raise RedisCircuitOpenError(
                f"not calling Redis until a probe succeeds (last error: {self.state.last_error})"
            )
        if admission is Admission.PROBE:
            self.state = probe_started(self.state)
        try:
            yield
        except UNREACHABLE as exc:
            if isinstance(exc, RedisCircuitOpenError):
                raise
            was_closed = self.state.closed
            self.state = failed(self.state, self.clock(), f"{type(exc).__name__}: {exc}", self.hold)
            if was_closed:
                log.warning("Redis unreachable, pausing Redis calls for %gs: %s", self.hold, exc)
            raise
        except (ResponseError, WatchError):
            # Redis answered, if with an error: it is reachable.
            self._close()
            raise
        except BaseException:
            if admission is Admission.PROBE:
                # A cancelled (or never sent) probe proved nothing; let the next caller probe.
                self.state = replace(self.state, probing=False)
            raise
        else:
            self._close()

    def _close(self) -> None:
        if not self.state.closed:
            log.info("Redis reachable again after %d failed call(s)", self.state.failures)
        self.state = succeeded(self.state)


class _GuardedPipeline(Pipeline):
    breaker: Breaker

    # redis-py's signature, positional bool and all: callers pass it positionally.
    async def execute(self, raise_on_error: bool = True) -> list[Any]:  # noqa: FBT001, FBT002
        async with self.breaker.call():
            return await super().execute(raise_on_error)


class GuardedRedis(aioredis.Redis):
    """A client whose every command and pipeline passes ``breaker``."""

    def __init__(self, client: aioredis.Redis, breaker: Breaker) -> None:
        """Share ``client``'s connection pool (and so its timeouts, TLS and decoding)."""
        super().__init__(connection_pool=client.connection_pool)
        self.breaker = breaker

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Run one command through the breaker."""
        async with self.breaker.call():
            return await super().execute_command(*args, **options)  # type: ignore[no-untyped-call]

    def pipeline(  # redis-py's signature, which it overrides
        self,
        transaction: bool = True,  # noqa: FBT001, FBT002
        shard_hint: str | None = None,
    ) -> Pipeline:
        """A pipeline whose `execute` passes the breaker."""
        pipe = _GuardedPipeline(
            self.connection_pool, self.response_callbacks, transaction, shard_hint
        )
        pipe.breaker = self.breaker
        return pipe
