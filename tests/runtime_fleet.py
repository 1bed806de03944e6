"""What the agent runtime tests share: a throwaway fleet in the real Redis, with in-process agents.

Agents run in the test's process (same code as `python -m newfuse_agent`, without the HTTP server)
so the tests can give them test handlers and stop them precisely; the e2e suite runs them as
processes. with_fleet runs one async scenario on a fresh fleet and removes its keys afterwards.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any, cast

import orjson
import redis.asyncio as aioredis

from newfuse.adapters.redis_connect import connect
from newfuse.adapters.taskclient import StreamEntries, TaskClient
from newfuse.wire.taskpolicy import TaskPolicy
from newfuse_agent.config import AgentConfig
from newfuse_agent.gateway import GatewayClient
from newfuse_agent.handlers import Handler, TaskContext
from newfuse_agent.handlers.echo import echo
from newfuse_agent.runtime import Agent

KEY = "test-signing-key-of-at-least-32-bytes"


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


async def eventually(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


class Fleet:
    """A throwaway fleet in Redis: a client and a way to start agents on it."""

    def __init__(self, url: str, namespace: str = "rt") -> None:
        self.url = url
        self.namespace, self.name = namespace, f"f{uuid.uuid4().hex[:8]}"
        self.client = TaskClient.from_url(url, self.namespace, self.name, signing_key=None)
        self.redis: aioredis.Redis = self.client.client

    def config(self, agent_id: str, **overrides: Any) -> AgentConfig:
        values: dict[str, Any] = {
            "agent_id": agent_id,
            "namespace": self.namespace,
            "fleet": self.name,
            "revision": "r1",
            "redis_url": self.url,
            "concurrency": 4,
            "heartbeat_seconds": 0.2,
            # Short bounds so reclaims and retries happen within a test's seconds; the e2e suite
            # runs the defaults.
            "tasks": TaskPolicy(
                claim_idle_seconds=0.5, lease_renew_seconds=0.2, retry_base_seconds=0.05
            ),
            "drain_grace_seconds": 5,
            **overrides,
        }
        return AgentConfig(**values)

    @asynccontextmanager
    async def agent(
        self,
        agent_id: str,
        handlers: dict[str, Handler] | None = None,
        gateway: GatewayClient | None = None,
        **overrides: Any,
    ) -> AsyncIterator[Agent]:
        config = self.config(agent_id, **overrides)
        client = connect(self.url, timeout=30)  # a cluster's client for a cluster URL
        context = TaskContext(agent_id, self.name, self.namespace, "r1", (), gateway=gateway)
        agent = Agent(config, client, handlers or {"echo": echo}, context)
        task = asyncio.create_task(agent.run())
        await eventually(lambda: _true(agent.ready), 10, "agent ready")
        try:
            yield agent
        finally:
            agent.request_drain()
            await asyncio.wait_for(task, 30)
            await client.aclose()

    async def results(self) -> list[dict[str, Any]]:
        entries = cast(StreamEntries, await self.redis.xrange(self.client.keys.result_stream))
        return [orjson.loads(fields["envelope"])["payload"] for _, fields in entries]

    async def dead_letters(self) -> list[dict[str, str]]:
        entries = cast(StreamEntries, await self.redis.xrange(self.client.keys.dead_letters))
        return [fields for _, fields in entries]

    async def close(self) -> None:
        keys = [k async for k in self.redis.scan_iter(match=self.client.keys.pattern)]
        if keys:
            await self.redis.delete(*keys)
        await self.client.aclose()


async def _true(value: bool) -> bool:
    return value


def with_fleet(url: str, body: Callable[[Fleet], Awaitable[None]], namespace: str = "rt") -> None:
    async def scenario() -> None:
        fleet = Fleet(url, namespace)
        try:
            await body(fleet)
        finally:
            await fleet.close()

    run(scenario())


def with_fleets(url: str, n: int, body: Callable[[list[Fleet]], Awaitable[None]]) -> None:
    """with_fleet for ``n`` fleets of one namespace (delegation, workflows)."""

    async def scenario() -> None:
        fleets = [Fleet(url) for _ in range(n)]
        try:
            await body(fleets)
        finally:
            for fleet in fleets:
                await fleet.close()

    run(scenario())


@asynccontextmanager
async def agents(
    *pairs: tuple[Fleet, dict[str, Handler]], concurrency: int = 1
) -> AsyncIterator[None]:
    """One agent per (fleet, handlers), running together."""
    async with AsyncExitStack() as stack:
        for i, (fleet, handlers) in enumerate(pairs):
            await stack.enter_async_context(
                fleet.agent(f"agent-{i}", handlers=handlers, concurrency=concurrency)
            )
        yield


async def _count(fleet: Fleet, n: int) -> bool:
    return await fleet.client.result_count() >= n


async def _dead(fleet: Fleet, n: int) -> bool:
    return int(await fleet.redis.xlen(fleet.client.keys.dead_letters)) >= n
