"""A de-duplicating work queue of fleet keys, like client-go's workqueue.

Watch events only say "this fleet may need work". Many events for one fleet collapse into one
pending key; a key is never handed to two workers at once (a key added while it is being processed
is queued again when that worker is done); failed keys come back with exponential backoff.

The queue is asyncio-only: its structures are not locked and its Event wakes only its own loop. A
caller on another thread (a sync kopf handler runs in a thread pool) would corrupt it or leave a
worker asleep, so `add` refuses to run anywhere but on the loop that owns the queue.
"""

from __future__ import annotations

import asyncio
from collections import deque


class WorkQueue:
    """Keys waiting for reconcile. Use from one event loop."""

    def __init__(self, base_delay: float = 0.5, max_delay: float = 60.0) -> None:
        """Retry failed keys after base_delay * 2**failures seconds, at most max_delay."""
        self._ready: deque[str] = deque()
        self._dirty: set[str] = set()
        self._processing: set[str] = set()
        self._timers: dict[str, asyncio.TimerHandle] = {}
        self._failures: dict[str, int] = {}
        self._wakeup = asyncio.Event()
        self._base_delay, self._max_delay = base_delay, max_delay
        self._loop: asyncio.AbstractEventLoop | None = None

    def _check_loop(self) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            raise RuntimeError(
                "WorkQueue used off its event loop (from a thread?): call it from a coroutine"
            ) from None
        if self._loop is None:
            self._loop = loop
        elif loop is not self._loop:
            raise RuntimeError("WorkQueue used from a second event loop")

    def __len__(self) -> int:
        """Keys waiting to be handed out."""
        return len(self._ready)

    @property
    def processing(self) -> int:
        """Keys handed out and not yet done."""
        return len(self._processing)

    def add(self, key: str) -> None:
        """Ask for ``key`` to be reconciled (a no-op if it is already waiting)."""
        self._check_loop()
        if key in self._dirty:
            return
        self._dirty.add(key)
        if key not in self._processing:
            self._ready.append(key)
            self._wakeup.set()

    def add_after(self, key: str, delay: float) -> None:
        """Add ``key`` after ``delay`` seconds; an earlier pending schedule for it wins."""
        if delay <= 0:
            self.add(key)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        timer = self._timers.get(key)
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timers[key] = loop.call_at(when, self._fire, key)

    def _fire(self, key: str) -> None:
        self._timers.pop(key, None)
        self.add(key)

    async def get(self) -> str:
        """Wait for the next key and mark it as being processed."""
        while not self._ready:
            self._wakeup.clear()
            await self._wakeup.wait()
        key = self._ready.popleft()
        self._dirty.discard(key)
        self._processing.add(key)
        return key

    def done(self, key: str) -> None:
        """Mark ``key`` processed; if it was added meanwhile, queue it again."""
        self._processing.discard(key)
        if key in self._dirty:
            self._ready.append(key)
            self._wakeup.set()

    def retry(self, key: str) -> float:
        """Schedule ``key`` again with backoff. Returns the delay chosen."""
        failures = self._failures.get(key, 0)
        self._failures[key] = failures + 1
        delay: float = min(self._base_delay * 2.0**failures, self._max_delay)
        self.add_after(key, delay)
        return delay

    def forget(self, key: str) -> None:
        """Reset ``key``'s backoff after a success."""
        self._failures.pop(key, None)

    def close(self) -> None:
        """Cancel pending delayed adds."""
        for timer in self._timers.values():
            timer.cancel()
        self._timers.clear()
