"""One live feed per fleet and gateway process, fanned out to its watchers with bounded queues.

Two readers run while a fleet has watchers: a poller that looks at the fleet's state every
`interval` seconds and sends the differences (newfuse.fleetapi.live), and a follower of the result
stream. Each watcher has a queue of `queue_size` events. A watcher that falls that far behind (a
client that stopped reading) is cut off, and its connection closed with a code that says so: the
gateway never buffers without bound for a reader that does not read.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from pydantic import ValidationError
from redis.exceptions import RedisError

from newfuse.adapters.taskclient import TaskClient
from newfuse.fleetapi.live import (
    Snapshot,
    agent_view,
    changes,
    fleet_view,
    result_event,
    snapshot_event,
)
from newfuse.fleetapi.metrics import WATCHERS, WATCHERS_CUT
from newfuse.wire.state import FleetSummary

log = logging.getLogger(__name__)
INTERVAL: Final = 0.5
QUEUE_SIZE: Final = 1000
RETRY_SECONDS: Final = 1.0


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class SlowConsumerError(Exception):
    """The watcher's queue filled: its client stopped reading."""


@dataclass(eq=False)
class Watcher:
    """One client's share of the feed: its queue, and whether it may see results."""

    results: bool
    queue: asyncio.Queue[dict[str, Any]] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    on_cut: Callable[[], object] | None = None
    cut: bool = False

    async def next(self) -> dict[str, Any]:
        """The next event; SlowConsumerError once the watcher has been cut off."""
        if self.cut:
            raise SlowConsumerError
        return await self.queue.get()


async def read_snapshot(tasks: TaskClient) -> Snapshot:
    """The fleet as Redis holds it now; records that do not parse are left out."""
    keys = tasks.keys
    raw = await tasks.client.hget(keys.fleet_state, keys.FLEET_SUMMARY_FIELD)
    summary = None
    if raw:
        with contextlib.suppress(ValidationError):
            summary = FleetSummary.model_validate_json(raw)
    counters = {
        str(name): int(value)
        for name, value in (await tasks.client.hgetall(keys.counters)).items()
        if str(value).lstrip("-").isdigit()
    }
    agents = {u.agent_id: agent_view(u) for u in await tasks.agents()}
    pending = int(await tasks.client.zcard(keys.review_due))
    return Snapshot(fleet_view(summary, counters, pending), agents)


class Feed:
    """The live feed of one fleet."""

    def __init__(self, tasks: TaskClient, *, interval: float = INTERVAL) -> None:
        """Watch the fleet ``tasks`` reaches, looking every ``interval`` seconds."""
        self.tasks, self.interval = tasks, interval
        self._watchers: set[Watcher] = set()
        self._readers: list[asyncio.Task[None]] = []
        self._last = Snapshot()
        self._starting = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def watch(self, *, results: bool) -> AsyncIterator[Watcher]:
        """A watcher whose first event is a snapshot; with ``results``, it also gets results."""
        watcher = Watcher(results)
        async with self._starting:
            if not self._readers:
                self._last = await read_snapshot(self.tasks)
                self._readers = [
                    asyncio.create_task(self._poll()),
                    asyncio.create_task(self._follow()),
                ]
            watcher.queue.put_nowait(snapshot_event(self._last, _now()))
            self._watchers.add(watcher)
            WATCHERS.inc()
        try:
            yield watcher
        finally:
            WATCHERS.dec()
            self._watchers.discard(watcher)
            if not self._watchers:
                for reader in self._readers:
                    reader.cancel()
                self._readers = []

    def broadcast(self, event: dict[str, Any], *, results_only: bool = False) -> None:
        """Queue ``event`` for every watcher (with ``results_only``, those that may see results)."""
        for watcher in tuple(self._watchers):
            if results_only and not watcher.results:
                continue
            try:
                watcher.queue.put_nowait(event)
            except asyncio.QueueFull:
                self._cut(watcher)

    def _cut(self, watcher: Watcher) -> None:
        watcher.cut = True
        self._watchers.discard(watcher)
        WATCHERS_CUT.inc()
        while not watcher.queue.empty():  # what it will never read is freed now
            watcher.queue.get_nowait()
        if watcher.on_cut is not None:
            watcher.on_cut()

    def _current(self) -> bool:
        """Whether the running reader is one of this feed's (see Hub._read for why)."""
        return asyncio.current_task() in self._readers

    async def _poll(self) -> None:
        while self._current():
            await asyncio.sleep(self.interval)
            try:
                now = await read_snapshot(self.tasks)
            except (RedisError, OSError) as exc:
                log.warning("live feed of %s: %s", self.tasks.keys.prefix, exc)
                continue
            for event in changes(self._last, now, _now()):
                self.broadcast(event)
            self._last = now

    async def _follow(self) -> None:
        while self._current():
            try:
                async for _, result in self.tasks.follow(block_ms=1000):
                    self.broadcast(result_event(result, _now()), results_only=True)
            except (RedisError, OSError) as exc:
                log.warning("live results of %s: %s", self.tasks.keys.prefix, exc)
                await asyncio.sleep(RETRY_SECONDS)
