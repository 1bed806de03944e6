"""One reader of a fleet's event stream per gateway process, handing each task its own events.

A blocking XREAD per subscriber would hold a Redis connection per open SSE stream; one reader per
fleet holds one, however many clients follow its tasks. The reader runs while the fleet has
subscribers. A subscriber whose queue fills (a hostile writer flooding one task id) is marked
`lost` and dropped; it catches up by reading the stream itself, so nothing is skipped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Final

from redis.exceptions import RedisError

from newfuse.adapters.a2aevents import Event, EventLog

log = logging.getLogger(__name__)
QUEUE_SIZE: Final = 256


@dataclass(eq=False)
class Subscription:
    """What one subscriber gets: its task's events, in stream order, unless `lost`."""

    task_id: str
    queue: asyncio.Queue[Event] = field(default_factory=lambda: asyncio.Queue(QUEUE_SIZE))
    lost: bool = False


class Hub:
    """Fans one fleet's event stream out to the subscribers of each task."""

    def __init__(self, events: EventLog, *, block_ms: int = 5000, retry_seconds: float = 1.0):
        """Read ``events`` (``block_ms`` a read; ``retry_seconds`` of rest after a failure)."""
        self.events, self.block_ms, self.retry_seconds = events, block_ms, retry_seconds
        self._subscribers: dict[str, set[Subscription]] = {}
        self._reader: asyncio.Task[None] | None = None
        self._starting = asyncio.Lock()

    @contextlib.asynccontextmanager
    async def subscribe(self, task_id: str) -> AsyncIterator[Subscription]:
        """Receive ``task_id``'s events added from now on (the caller reads older ones itself)."""
        subscription = Subscription(task_id)
        async with self._starting:
            if self._reader is None or self._reader.done():
                start = await self.events.newest()
                self._reader = asyncio.create_task(self._read(start))
            self._subscribers.setdefault(task_id, set()).add(subscription)
        try:
            yield subscription
        finally:
            self._drop(subscription)
            if not self._subscribers and self._reader is not None:
                self._reader.cancel()
                self._reader = None

    def rejoin(self, subscription: Subscription) -> None:
        """Take a `lost` subscription back; its owner then reads what it missed from the stream."""
        while not subscription.queue.empty():
            subscription.queue.get_nowait()
        subscription.lost = False
        self._subscribers.setdefault(subscription.task_id, set()).add(subscription)

    def _drop(self, subscription: Subscription) -> None:
        found = self._subscribers.get(subscription.task_id)
        if found is not None:
            found.discard(subscription)
            if not found:
                del self._subscribers[subscription.task_id]

    async def _read(self, after: str) -> None:
        # Stop once this task is no longer the hub's reader, not only when cancelled: a
        # cancellation that lands while redis-py waits for a pooled connection comes out as a
        # TimeoutError, and a reader that went on would hold a connection for good.
        while self._reader is asyncio.current_task():
            try:
                events, after = await self.events.wait(after, self.block_ms)
            except (RedisError, OSError) as exc:
                log.warning("reading %s failed (%s): retrying", self.events.key, exc)
                await asyncio.sleep(self.retry_seconds)
                continue
            except Exception:  # the reader must outlive any bug: its subscribers wait on it
                log.exception("reading %s failed: retrying", self.events.key)
                await asyncio.sleep(self.retry_seconds)
                continue
            for event in events:
                for subscription in tuple(self._subscribers.get(event.task_id, ())):
                    try:
                        subscription.queue.put_nowait(event)
                    except asyncio.QueueFull:
                        subscription.lost = True
                        self._drop(subscription)
