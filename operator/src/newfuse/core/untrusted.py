"""Reading what agents write to Redis: every record is checked, and a bad one is only skipped.

Any agent pod can write its fleet's hashes (`agents`, `retired`, `counters`, `versions`), so a bug,
an old agent or a hostile pod can put anything there. The operator folds those records into status
and rollout decisions. A record that does not parse, or parses into values the API server would
refuse in status (a timestamp without a time zone cannot even be compared; NaN is not JSON; a count
beyond int64 is refused), must cost that one record, never the fleet's reconcile: a reconcile that
raised would be retried for ever and the fleet's pods would go unmanaged.

The parsers here are total: they return the good records and name the bad ones. LogLimiter keeps a
record that stays bad from logging on every resync.
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping
from dataclasses import dataclass, field
from typing import Final

from pydantic import ValidationError

from newfuse.wire.scripts import COUNTER_COMPLETED, COUNTER_FAILED, COUNTER_REJECTED
from newfuse.wire.state import StateUpdate

# The largest count one record may report. A million agents at this bound still sum below int64
# (what the CRD's integers are), and no agent finishes a trillion tasks.
MAX_COUNT: Final = 2**40
# How often one bad record is logged again while it stays bad (the count goes on regardless).
LOG_INTERVAL_SECONDS: Final = 600.0
REASON_LIMIT: Final = 200


class MalformedRecordError(ValueError):
    """A record that cannot be used; the message says why (short, for a log line)."""


@dataclass(frozen=True)
class Skipped:
    """One record skipped: where it was and why."""

    field: str
    reason: str


def parse_state_update(raw: str) -> StateUpdate:
    """The StateUpdate in ``raw``; MalformedRecordError if it is not one the operator can use."""
    try:
        update = StateUpdate.model_validate_json(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "record"
        raise MalformedRecordError(f"{where}: {first['msg']}"[:REASON_LIMIT]) from None
    problem = _implausible(update)
    if problem is not None:
        raise MalformedRecordError(problem)
    return update


def _implausible(update: StateUpdate) -> str | None:
    metrics = update.state.metrics
    if update.timestamp.tzinfo is None:
        return "timestamp has no time zone"
    if metrics.last_active is not None and metrics.last_active.tzinfo is None:
        return "lastActive has no time zone"
    counts = {
        "tasksCompleted": metrics.tasks_completed,
        "tasksFailed": metrics.tasks_failed,
        "requestsHandled": metrics.requests_handled,
    }
    for name, value in counts.items():
        if value > MAX_COUNT:
            return f"{name} {value} is beyond {MAX_COUNT}"
    p95 = metrics.latency_p95_ms
    if p95 is not None and not (math.isfinite(p95) and p95 >= 0):
        return f"latencyP95Ms {p95} is not a finite, non-negative number"
    return None


def parse_states(raw: Mapping[str, str]) -> tuple[list[StateUpdate], list[Skipped]]:
    """The usable StateUpdates of a hash (field -> JSON), and the fields skipped."""
    updates: list[StateUpdate] = []
    skipped: list[Skipped] = []
    for name, payload in raw.items():
        try:
            updates.append(parse_state_update(payload))
        except MalformedRecordError as exc:
            skipped.append(Skipped(name, str(exc)))
    return updates, skipped


def parse_count(value: str) -> int | None:
    """A counter value as HINCRBY writes it (a decimal in 0..MAX_COUNT), else None."""
    text = value.strip()
    if not text.isascii() or not text.isdigit() or len(text) > len(str(MAX_COUNT)):
        return None
    count = int(text)
    return count if count <= MAX_COUNT else None


def parse_revision_counts(
    raw: Mapping[str, str],
) -> tuple[dict[str, tuple[int, int, int]], list[Skipped]]:
    """(completed, failed, rejected) per revision from the counters hash, and the fields skipped.

    Only `rev:<revision>:<outcome>` fields are per-revision counts; fields of other shapes or
    outcomes are other counters (fleet-wide totals, duplicates), not errors.
    """
    counts: dict[str, list[int]] = {}
    skipped: list[Skipped] = []
    slots = {COUNTER_COMPLETED: 0, COUNTER_FAILED: 1, COUNTER_REJECTED: 2}
    for name, value in raw.items():
        parts = name.split(":")
        if len(parts) != 3 or parts[0] != "rev" or parts[2] not in slots:
            continue
        count = parse_count(value)
        if count is None:
            skipped.append(Skipped(name, f"{value[:40]!r} is not a count"))
            continue
        counts.setdefault(parts[1], [0, 0, 0])[slots[parts[2]]] += count
    return {rev: (c[0], c[1], c[2]) for rev, c in counts.items()}, skipped


@dataclass
class LogLimiter:
    """Says when a repeating complaint may be logged again: once per ``interval`` per key.

    ``admit`` returns None to stay quiet, else how many repeats were suppressed since the last
    line. Keys not seen for an interval are forgotten, so memory follows the live complaints.
    """

    interval: float = LOG_INTERVAL_SECONDS
    _last: dict[Hashable, tuple[float, int]] = field(default_factory=dict)

    def admit(self, key: Hashable, now: float) -> int | None:
        """Whether to log ``key`` at monotonic time ``now`` (see the class docstring)."""
        seen = self._last.get(key)
        if seen is not None and now - seen[0] < self.interval:
            self._last[key] = (seen[0], seen[1] + 1)
            return None
        if len(self._last) > 1024:
            self._last = {k: v for k, v in self._last.items() if now - v[0] < self.interval}
        self._last[key] = (now, 0)
        return 0 if seen is None else seen[1]
