"""How often the operator looks again at every fleet when nothing told it to.

Agent metrics and heartbeats change without a watch event, so every fleet is reconciled again
periodically (15 s by default). At 10,000 fleets that period alone asks for 667 reconciles a
second, more than one operator process does (each reads Redis and may write the status): the
resync would use every worker for ever. So the period stretches with the fleet count to keep the
resync at or under a rate; the resync's keys also wait behind event-driven ones (workqueue.py).
"""

from __future__ import annotations


def resync_period(fleets: int, base_seconds: float, max_per_second: float) -> float:
    """Seconds between two resyncs of one fleet: ``base_seconds``, or longer at scale."""
    return max(base_seconds, fleets / max_per_second)
