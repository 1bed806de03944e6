"""The replay guard of coordination messages: each signed message id is taken once.

A drain notice is a pub/sub message, so no stream records that it was delivered; a captured one
could be published again within its freshness window (newfuse.wire.envelope.MAX_CLOCK_SKEW) and
drain the fleet a second time. Each receiver remembers the ids it took for as long as a message
with that timestamp could still be fresh, then forgets them, so memory stays bounded by the rate
of genuine messages, not by time.
"""

from __future__ import annotations

import datetime as dt
from typing import Final

from newfuse.wire.envelope import MAX_CLOCK_SKEW, MessageRejectedError, RejectReason

# Beyond this many remembered ids, new ones are refused rather than memory growing without bound
# (genuine coordination traffic is a few messages a minute).
MAX_REMEMBERED: Final = 10_000


class ReplayGuard:
    """Message ids taken recently, each until its timestamp is too old to be fresh."""

    def __init__(
        self, window: dt.timedelta = 2 * MAX_CLOCK_SKEW, limit: int = MAX_REMEMBERED
    ) -> None:
        """Remember ids for ``window`` after their timestamp (skew ahead plus age behind)."""
        self.window, self.limit = window, limit
        self._seen: dict[str, dt.datetime] = {}

    def check(self, message_id: str, timestamp: dt.datetime, now: dt.datetime) -> None:
        """Take ``message_id`` once; raise MessageRejectedError (replayed) the second time."""
        self._forget(now)
        if message_id in self._seen:
            raise MessageRejectedError(
                RejectReason.REPLAYED, f"message {message_id} was already taken"
            )
        if len(self._seen) >= self.limit:
            raise MessageRejectedError(
                RejectReason.REPLAYED, f"more than {self.limit} messages within {self.window}"
            )
        self._seen[message_id] = timestamp if timestamp.tzinfo else timestamp.replace(tzinfo=dt.UTC)

    def _forget(self, now: dt.datetime) -> None:
        horizon = now - self.window
        for message_id in [m for m, t in self._seen.items() if t < horizon]:
            del self._seen[message_id]
