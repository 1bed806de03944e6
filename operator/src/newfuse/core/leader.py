"""Leader election decisions over a coordination.k8s.io Lease, kept pure so they are table-tested.

Two operator replicas run; exactly one may reconcile. The rules are client-go's (the ones
controller-runtime uses), because their safety argument is well understood:

- A lease is expired only when its record has not changed for ``leaseDurationSeconds`` as seen on
  the *candidate's own clock* since it first observed that record. Comparing against the holder's
  ``renewTime`` would trust another machine's clock.
- The holder gives up (and the process exits) if it cannot renew for ``renew_deadline``, which is
  shorter than the lease duration, so it has stopped before anyone else may take over. That gap is
  what guarantees no double reconcile.

kopf's own peering was not used: its 60 s peer lifetime would make failover take a minute, and it
pauses handlers rather than fencing the writes our controller makes from its own tasks.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, replace
from enum import StrEnum


@dataclass(frozen=True)
class ElectionTimings:
    """How long a lease lasts, how long the holder keeps trying to renew, and how often to try."""

    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0

    def __post_init__(self) -> None:
        """Refuse timings under which two replicas could both believe they lead."""
        if not 0 < self.retry_period < self.renew_deadline < self.lease_duration:
            raise ValueError(
                "leader election needs 0 < retry period < renew deadline < lease duration, got "
                f"{self.retry_period:g} / {self.renew_deadline:g} / {self.lease_duration:g}"
            )


@dataclass(frozen=True)
class LeaseRecord:
    """The fields of a Lease's spec that election reads and writes."""

    holder: str | None
    lease_duration_seconds: int
    acquire_time: dt.datetime | None = None
    renew_time: dt.datetime | None = None
    transitions: int = 0


class LeaseVerdict(StrEnum):
    """What a candidate should do after reading the Lease."""

    CREATE = "Create"  # there is no Lease yet
    TAKE_OVER = "TakeOver"  # free or expired: write ourselves in as holder
    RENEW = "Renew"  # we hold it: bump renewTime
    WAIT = "Wait"  # someone else holds a live lease


def judge(
    record: LeaseRecord | None,
    identity: str,
    observed_for: float,
) -> LeaseVerdict:
    """Decide from the current record; ``observed_for`` is how long it has looked unchanged."""
    if record is None:
        return LeaseVerdict.CREATE
    if record.holder == identity:
        return LeaseVerdict.RENEW
    if not record.holder or observed_for >= record.lease_duration_seconds:
        return LeaseVerdict.TAKE_OVER
    return LeaseVerdict.WAIT


def claim(
    record: LeaseRecord | None, identity: str, now: dt.datetime, timings: ElectionTimings
) -> LeaseRecord:
    """The record to write when ``identity`` creates, takes over or renews the lease at ``now``."""
    duration = max(1, round(timings.lease_duration))
    if record is None:
        return LeaseRecord(identity, duration, acquire_time=now, renew_time=now)
    if record.holder == identity:
        return replace(record, lease_duration_seconds=duration, renew_time=now)
    return LeaseRecord(
        identity,
        duration,
        acquire_time=now,
        renew_time=now,
        transitions=record.transitions + 1,
    )


def released(record: LeaseRecord) -> LeaseRecord:
    """What a holder leaving on purpose writes, so a standby need not wait out the lease."""
    return replace(record, holder=None, lease_duration_seconds=1)


def seconds_until_next_try(
    verdict: LeaseVerdict,
    record: LeaseRecord | None,
    observed_for: float,
    timings: ElectionTimings,
) -> float:
    """How long a candidate sleeps after ``verdict``: the retry period, or less if expiry is near.

    Waking exactly at expiry (rather than at the next retry tick) trims up to a whole retry
    period from every failover.
    """
    if verdict is LeaseVerdict.WAIT and record is not None:
        remaining = record.lease_duration_seconds - observed_for
        return max(0.05, min(timings.retry_period, remaining + 0.05))
    return timings.retry_period
