"""A de-duplicating work queue of fleet keys, like client-go's workqueue.

Watch events only say "this fleet may need work". Many events for one fleet collapse into one
pending key; a key is never handed to two workers at once (a key added while it is being processed
is queued again when that worker is done); failed keys come back with exponential backoff.

Two lanes: keys a watch event, a retry or a timer asked for come before keys the periodic resync
asked for (``background``). With 10,000 fleets the resync alone could keep every worker busy, and
a new fleet's events would wait behind thousands of fleets that had nothing to do; client-go's
queue has one lane because controller-runtime resyncs every 10 hours, ours every 15 seconds.
A background key that an event asks for again moves to the front lane.

The queue is asyncio-only: its structures are not locked and its Event wakes only its own loop. A
caller on another thread (a sync kopf handler runs in a thread pool) would corrupt it or leave a
worker asleep, so `add` refuses to run anywhere but on the loop that owns the queue.
"""

from __future__ import annotations

import asyncio
import functools
from collections import deque


class WorkQueue:
    """Keys waiting for reconcile. Use from one event loop."""

    def __init__(self, base_delay: float = 0.5, max_delay: float = 60.0) -> None:
        """Retry failed keys after base_delay * 2**failures seconds, at most max_delay."""
        self._ready: deque[str] = deque()
        self._background: deque[str] = deque()
        self._dirty: set[str] = set()
        self._urgent: set[str] = set()  # the dirty keys that belong in the front lane
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
        """Keys waiting to be handed out (not those asked for again while a worker has them)."""
        return len(self._dirty) - sum(1 for key in self._processing if key in self._dirty)

    @property
    def processing(self) -> int:
        """Keys handed out and not yet done."""
        return len(self._processing)

    def add(self, key: str, *, background: bool = False) -> None:
        """Ask for ``key`` to be reconciled (no-op if it waits already, in that lane or ahead).

        ``background``: the periodic resync's request, served after every other key.
        """
        self._check_loop()
        if key in self._dirty and (background or key in self._urgent):
            return
        self._dirty.add(key)
        if not background:
            self._urgent.add(key)
        if key not in self._processing:
            self._lane(key).append(key)
            self._wakeup.set()

    def _lane(self, key: str) -> deque[str]:
        return self._ready if key in self._urgent else self._background

    def add_after(self, key: str, delay: float, *, background: bool = False) -> None:
        """Add ``key`` after ``delay`` seconds; an earlier pending schedule for it wins."""
        if delay <= 0:
            self.add(key, background=background)
            return
        loop = asyncio.get_running_loop()
        when = loop.time() + delay
        timer = self._timers.get(key)
        if timer is not None:
            if timer.when() <= when:
                return
            timer.cancel()
        self._timers[key] = loop.call_at(
            when, functools.partial(self._fire, key, background=background)
        )

    def _fire(self, key: str, *, background: bool) -> None:
        self._timers.pop(key, None)
        self.add(key, background=background)

    async def get(self) -> str:
        """Wait for the next key and mark it as being processed."""
        while True:
            key = self._next()
            if key is not None:
                break
            self._wakeup.clear()
            await self._wakeup.wait()
        self._dirty.discard(key)
        self._urgent.discard(key)
        self._processing.add(key)
        return key

    def _next(self) -> str | None:
        # A key promoted to the front lane leaves a stale copy in the back one; a key handed out
        # and asked for again meanwhile waits for done(). Both copies are dropped here.
        while self._ready or self._background:
            key = (self._ready or self._background).popleft()
            if key in self._dirty and key not in self._processing:
                return key
        return None

    def done(self, key: str) -> None:
        """Mark ``key`` processed; if it was added meanwhile, queue it again."""
        self._processing.discard(key)
        if key in self._dirty:
            self._lane(key).append(key)
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
