"""Which memories an agent may recall: the quarantine rule, pure.

A memory written by a canary revision is visible to that revision's agents only, until its
rollout settles: completed lifts the quarantine (every agent sees it), rolled back or aborted
deletes it. Expired memories are visible to nobody.
"""

from __future__ import annotations

from collections.abc import Mapping

from newfuse.wire.memory import MemoryRecord


def visible(record: MemoryRecord, quarantine: Mapping[str, str], reader: str, now_ms: int) -> bool:
    """Whether an agent of revision ``reader`` may recall ``record`` at ``now_ms``."""
    if record.expires_ms is not None and record.expires_ms <= now_ms:
        return False
    held_for = quarantine.get(record.id)
    return held_for is None or held_for == reader


def quarantining(writer: str, canary: str | None, stable: str | None) -> str | None:
    """The revision a write is quarantined for: the canary's own, while it is not yet stable."""
    return writer if canary is not None and writer == canary and writer != stable else None
