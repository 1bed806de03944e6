"""Which memories an agent may recall, and which revision's writes are trusted: pure rules.

A memory written by a revision that is not (yet) the fleet's trusted one is quarantined: visible
to that revision's agents only, so a bad canary cannot poison what stable agents recall. The
trusted revision is the stable one, or the canary once its rollout completed. The operator
settles the quarantine by level, whenever it writes the fleet's summary: the trusted revision's
writes are lifted, and those of any revision other than the rollout's pending canary (rolled back,
aborted or superseded) are deleted. Expired memories are visible to nobody.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from newfuse.api.rollout import RolloutPhase
from newfuse.wire.memory import MemoryRecord
from newfuse.wire.state import FleetSummary

_SETTLED = frozenset({RolloutPhase.COMPLETED.value})
_UNDONE = frozenset({RolloutPhase.ROLLED_BACK.value, RolloutPhase.ABORTED.value})


def visible(record: MemoryRecord, quarantine: Mapping[str, str], reader: str, now_ms: int) -> bool:
    """Whether an agent of revision ``reader`` may recall ``record`` at ``now_ms``."""
    if record.expires_ms is not None and record.expires_ms <= now_ms:
        return False
    held_for = quarantine.get(record.id)
    return held_for is None or held_for == reader


@dataclass(frozen=True)
class Settlement:
    """Whose writes every agent may see (``trusted``) and whose wait for a verdict (``pending``)."""

    trusted: str | None
    pending: str | None = None

    def quarantines(self, writer: str) -> str | None:
        """The revision a write by ``writer`` is quarantined for (None: visible to all).

        Unknown trust quarantines: a write lifted late is better than a canary's write leaked.
        """
        return None if writer == self.trusted else writer


def settlement(summary: FleetSummary | None) -> Settlement:
    """What the fleet's summary says of trust: the stable or completed revision, the canary."""
    if summary is None:
        return Settlement(None)
    rollout = summary.rollout
    if rollout is None:
        return Settlement(summary.update_revision)
    if rollout.phase in _SETTLED:
        return Settlement(rollout.canary_revision)
    if rollout.phase in _UNDONE:
        return Settlement(rollout.stable_revision)
    return Settlement(rollout.stable_revision, rollout.canary_revision)
