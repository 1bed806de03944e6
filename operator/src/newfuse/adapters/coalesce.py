"""Group commit for Lua steps: the calls made while a round trip is out go together in the next one.

An agent's round trips to Redis, not its handlers, bound how many short tasks it finishes a second:
each result is one atomic script call, and redis-py spends more time packing, pooling and parsing
one command than Redis spends running it. Calls that arrive while no batch is being sent go out at
once (an idle agent adds no latency); calls that arrive while one is out queue and leave together
in one pipeline as soon as it returns. Each call is still its own atomic script: batching changes
how many round trips carry them, never what any of them does, so a crash mid-batch leaves each
step either done or not done, as before.

On a single server the batches go over one connection the batcher keeps, not through a pipeline:
a pipeline takes a connection from the pool and gives it back for every round trip (a lock, a
timeout, a readiness poll of the socket, then the same again on release), which cost more than
packing and parsing the calls it carries. Only one batch is out at a time, so one connection is
all the batcher needs. A Redis Cluster client keeps its pipeline, which routes each call to the
primary of its slot.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.connection import AbstractConnection
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

Arg = str | bytes | int | float


class ScriptBatcher:
    """Sends the script calls queued meanwhile in one pipeline per round trip."""

    def __init__(self, client: aioredis.Redis, max_batch: int = 256) -> None:
        """Batch calls through ``client``, at most ``max_batch`` per round trip."""
        self.client = client
        self.max_batch = max_batch
        self._queued: list[tuple[AsyncScript, Sequence[Arg], Sequence[Arg], asyncio.Future[Any]]]
        self._queued = []
        self._sender: asyncio.Task[None] | None = None
        self._connection: AbstractConnection | None = None
        # Typed as Redis either way (redis_connect.connect); a cluster client routes by slot.
        self._routed = isinstance(client, RedisCluster)
        self.round_trips = 0  # for tests and benchmarks: how well calls were grouped

    async def call(self, script: AsyncScript, keys: Sequence[Arg], args: Sequence[Arg]) -> Any:
        """Run ``script`` with ``keys`` and ``args``; its reply (or its error) once sent."""
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._queued.append((script, keys, args, future))
        if self._sender is None:
            self._sender = asyncio.create_task(self._send_all(), name="script-batcher")
        return await future

    @property
    def sending(self) -> asyncio.Task[None] | None:
        """The round trip in flight, if any: whoever waits for its replies can wait for it."""
        return self._sender

    async def aclose(self) -> None:
        """Wait for what was queued to be sent, then give the batcher's connection back."""
        if self._sender is not None:
            with contextlib.suppress(Exception):
                await self._sender
        connection, self._connection = self._connection, None
        if connection is not None:
            await self.client.connection_pool.release(connection)

    async def _send_all(self) -> None:
        try:
            while self._queued:
                batch = self._queued[: self.max_batch]
                del self._queued[: self.max_batch]
                await self._send(batch)
        finally:
            self._sender = None
            for *_, future in self._queued:  # only after a cancellation of this task
                future.cancel()
            self._queued = []

    async def _send(
        self, batch: list[tuple[AsyncScript, Sequence[Arg], Sequence[Arg], asyncio.Future[Any]]]
    ) -> None:
        try:
            replies = await self._execute([(s, k, a) for s, k, a, _ in batch])
        except Exception as exc:  # every caller learns its step's fate is unknown
            for *_, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        except BaseException:
            for *_, future in batch:
                future.cancel()
            raise
        for (*_, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its caller was cancelled: the step ran all the same
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)

    async def _execute(
        self, calls: list[tuple[AsyncScript, Sequence[Arg], Sequence[Arg]]]
    ) -> list[Any]:
        replies = await self._pipeline(calls)
        missing = {id(s): s for (s, _, _), r in zip(calls, replies, strict=True)
                   if isinstance(r, NoScriptError)}  # fmt: skip
        if not missing:
            return replies
        # A restarted (or flushed) Redis forgot the scripts; a NOSCRIPT call did not run, so
        # loading them and sending those calls again runs each step exactly once.
        for script in missing.values():
            script.sha = await self.client.script_load(script.script)
        again = [i for i, r in enumerate(replies) if isinstance(r, NoScriptError)]
        for i, reply in zip(again, await self._pipeline([calls[i] for i in again]), strict=True):
            replies[i] = reply
        return replies

    async def _pipeline(
        self, calls: list[tuple[AsyncScript, Sequence[Arg], Sequence[Arg]]]
    ) -> list[Any]:
        self.round_trips += 1
        if self._routed:
            pipe = self.client.pipeline(transaction=False)
            for script, keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            return list(await pipe.execute(raise_on_error=False))
        commands = [("EVALSHA", s.sha, len(k), *k, *a) for s, k, a in calls]
        connection = await self._held_connection()
        # Like a pipeline: a connection error or timeout disconnects, and the connection's retry
        # policy decides whether the batch goes again. A step that had run is harmless run again:
        # results and guards find what they stored, and entries a lost fetch took are reclaimed.
        return await connection.retry.call_with_retry(
            lambda: _send_and_read(connection, commands), lambda _: connection.disconnect()
        )

    async def _held_connection(self) -> AbstractConnection:
        if self._connection is None:
            pool = self.client.connection_pool
            self._connection = await pool.get_connection()  # type: ignore[no-untyped-call]
        return self._connection


async def run_once(
    client: aioredis.Redis, calls: Sequence[tuple[AsyncScript, Sequence[Arg], Sequence[Arg]]]
) -> list[Any]:
    """``calls`` in one round trip, now, on a connection of ``client``'s pool.

    The replies come in order, a script's error as its reply rather than raised: for a caller
    with many calls in hand at once (a bulk submit), without a pipeline's per-call bookkeeping.
    """
    batcher = ScriptBatcher(client, max_batch=max(1, len(calls)))
    try:
        return await batcher._execute(list(calls))
    finally:
        await batcher.aclose()


async def _send_and_read(
    connection: AbstractConnection, commands: list[tuple[Arg, ...]]
) -> list[Any]:
    try:
        await connection.send_packed_command(connection.pack_commands(commands))
        replies: list[Any] = []
        # One deadline (the socket timeout) for the whole batch's replies: redis-py arms a timer
        # per reply otherwise, which cost a bulk submit more than parsing the replies.
        async with asyncio.timeout(connection.socket_timeout):
            for _ in commands:
                try:
                    replies.append(await connection.read_response(timeout=math.inf))
                except ResponseError as exc:  # a script's error is its caller's reply
                    replies.append(exc)
    except TimeoutError as exc:
        await connection.disconnect()
        raise RedisTimeoutError(f"no reply within {connection.socket_timeout}s") from exc
    except BaseException:
        # Replies may be left unread on the socket (a cancellation, a timeout): it must not serve
        # the next batch. It reconnects on next use.
        await connection.disconnect()
        raise
    return replies
