"""The finalizer's decisions: remove a deleted fleet's Redis keys, yet never hold its deletion.

A deleted fleet must leave nothing in Redis, and its agents are what write there: an agent that is
still running re-creates its `agents` and `versions` entries with its next heartbeat. So the
finalizer first deletes the fleet's pods and waits until they are gone, then UNLINKs every key by
name (FleetKeys.all_keys(), no SCAN). It then looks again after a settle period longer than the
agents' heartbeat period: a writer still alive (a force-deleted pod's process lives on until its
grace period ends) would have re-created something by then. A look that removes nothing releases
the fleet.

The way out: a fleet whose cleanup cannot finish (Redis unreachable, pods that never go) is
released anyway at its deadline, ``timeout`` after the deletion was asked for (or after this
operator started, if later, so that a restart never cuts a wait short), and the keys left are
logged. The skip annotation releases it at once. Either way a fleet, and so its namespace, can
always be deleted.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum

from newfuse.core import naming


class Step(StrEnum):
    """What the finalizer does next."""

    SKIP = "skip"  # the annotation asks to release now; keys stay
    GIVE_UP = "give-up"  # the deadline passed: one last try at the keys, then release
    DELETE_PODS = "delete-pods"  # some pods have not been asked to go yet
    WAIT_FOR_PODS = "wait-for-pods"  # pods are terminating; their agents may still write
    REMOVE_KEYS = "remove-keys"  # UNLINK every key (again after a settle period)
    SETTLE = "settle"  # keys were just removed: wait, then look again


@dataclass(frozen=True)
class CleanupFacts:
    """What the finalizer knows about one deleted fleet."""

    skip_requested: bool
    pods_undeleted: int  # pods of the fleet without a deletionTimestamp
    pods_left: int  # pods of the fleet that still exist (terminating or not)
    now: dt.datetime
    deadline: dt.datetime
    removed_at: dt.datetime | None  # when this operator last UNLINKed the keys
    settle: dt.timedelta


def skip_requested(annotations: Mapping[str, str]) -> bool:
    """True if the fleet's skip annotation says "true" (any case)."""
    return annotations.get(naming.SKIP_REDIS_CLEANUP_ANNOTATION, "").strip().lower() == "true"


def cleanup_deadline(
    deletion_timestamp: str | None, watching_since: dt.datetime, timeout: dt.timedelta
) -> dt.datetime:
    """When the finalizer stops waiting for Redis and its pods.

    ``deletion_timestamp`` is the fleet's metadata.deletionTimestamp (RFC 3339); one that does
    not parse counts from ``watching_since``.
    """
    start = watching_since
    try:
        requested = dt.datetime.fromisoformat(deletion_timestamp) if deletion_timestamp else None
    except ValueError:
        requested = None
    if requested is not None and requested.tzinfo is not None and requested > start:
        start = requested
    return start + timeout


def next_step(facts: CleanupFacts) -> Step:
    """The finalizer's next step for a deleted fleet."""
    if facts.skip_requested:
        return Step.SKIP
    if facts.now >= facts.deadline:
        return Step.GIVE_UP
    if facts.pods_undeleted:
        return Step.DELETE_PODS
    if facts.pods_left:
        return Step.WAIT_FOR_PODS
    if facts.removed_at is not None and facts.now < facts.removed_at + facts.settle:
        return Step.SETTLE
    return Step.REMOVE_KEYS


def released_after_removal(removed_before: dt.datetime | None, removed_now: int) -> bool:
    """True if an UNLINK ends the cleanup: a look after a settle period that found nothing.

    The first UNLINK never does: agents of pods that just went may still write.
    """
    return removed_before is not None and removed_now == 0
