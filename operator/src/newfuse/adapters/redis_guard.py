"""Every Redis command of the operator passes one circuit breaker (newfuse.core.rediscircuit).

The breaker sits under the RedisStore methods, in the client itself: single commands, scripts and
pipelines all go through `execute_command` or `Pipeline.execute`, so a method added to the store
later is covered without remembering to. While the circuit is open a command fails at once with
RedisCircuitOpenError, a redis ConnectionError, so every caller's existing `except RedisError`
handling (report Redis as unreachable, go on with pod work) applies unchanged.

`guard` picks the wrapper for the kind of client redis_connect.connect made: GuardedRedis for one
server, GuardedRedisCluster for a Redis Cluster (whose node pools it shares the same way).
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from typing import Any, cast

import redis.asyncio as aioredis
from redis.asyncio.client import Pipeline
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import ResponseError, WatchError
from redis.exceptions import TimeoutError as RedisTimeoutError

from newfuse.adapters.redis_connect import ClusterClient, ScriptingClusterPipeline
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


class _GuardedClusterPipeline(ScriptingClusterPipeline):
    __slots__ = ("breaker",)
    breaker: Breaker

    async def execute(  # redis-py's signature: callers pass it positionally
        self,
        raise_on_error: bool = True,  # noqa: FBT001, FBT002
        allow_redirections: bool = True,  # noqa: FBT001, FBT002
    ) -> list[Any]:
        async with self.breaker.call():
            return await super().execute(raise_on_error, allow_redirections)


class GuardedRedisCluster(ClusterClient):
    """A Redis Cluster client whose every command and pipeline passes ``breaker``.

    Made by `guard` from a connected client, whose nodes (and so connections) it shares.
    """

    __slots__ = ("breaker",)
    breaker: Breaker

    async def execute_command(self, *args: Any, **options: Any) -> Any:
        """Run one command through the breaker; ACL changes go to every node.

        Each node of a cluster keeps its own ACL users, replicas included (one may be promoted):
        a fleet's user made on one node only would be refused by the others.
        """
        async with self.breaker.call():
            if str(args[0]).upper() == "ACL" and "target_nodes" not in options:
                # A node list, not the ALL_NODES flag: redis-py maps a flag to nodes only for
                # the commands it knows by name, which "ACL" split from "SETUSER" is not.
                if self._initialize:
                    await self.initialize()
                options["target_nodes"] = self.get_nodes()
            return await super().execute_command(*args, **options)

    def pipeline(
        self,
        transaction: Any | None = None,
        shard_hint: Any | None = None,
    ) -> ClusterPipeline:
        """A pipeline whose `execute` passes the breaker (a transaction: one slot's keys only)."""
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # redis-py's refusal
        # redis-py declares an attribute abstract that its own ClusterPipeline sets at run time.
        pipe = _GuardedClusterPipeline(self, transaction)  # type: ignore[abstract]
        pipe.breaker = self.breaker
        return pipe


def _slot_names(cls: type) -> list[str]:
    names: list[str] = []
    for klass in cls.__mro__:
        slots = klass.__dict__.get("__slots__", ())
        names.extend([slots] if isinstance(slots, str) else slots)
    return names


def guard(client: aioredis.Redis, breaker: Breaker) -> aioredis.Redis:
    """``client`` with every command passing ``breaker``, sharing its connections.

    A cluster client's state is copied attribute by attribute into a GuardedRedisCluster: its
    nodes manager (the node pools), retry policy and codecs are shared, as one server's pool is.
    """
    if not isinstance(cast(object, client), RedisCluster):
        return GuardedRedis(client, breaker)
    guarded = GuardedRedisCluster.__new__(GuardedRedisCluster)
    for name in _slot_names(RedisCluster):
        if name != "__weakref__" and hasattr(client, name):
            setattr(guarded, name, getattr(client, name))
    guarded.__dict__.update(getattr(client, "__dict__", {}))
    guarded.breaker = breaker
    return cast(aioredis.Redis, guarded)
