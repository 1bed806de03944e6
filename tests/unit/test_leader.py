"""Leader election: the pure verdicts, table by table, and the elector against an in-memory Lease.

The in-memory Lease enforces resourceVersion like the API server, so two electors racing for it
exercise the same optimistic-locking path as in a cluster (the real Lease is covered end to end
by the failover test in tests/e2e).
"""

from __future__ import annotations

import asyncio
import datetime as dt
from dataclasses import dataclass, field
from typing import Any, cast

import pytest

from newfuse.adapters.lease import LeaseConflictError, ObservedLease
from newfuse.core.leader import (
    ElectionTimings,
    LeaseRecord,
    LeaseVerdict,
    claim,
    judge,
    released,
    seconds_until_next_try,
)
from newfuse.runtime.leader import LeaderElector, run_as_leader

T0 = dt.datetime(2026, 11, 22, 12, 0, tzinfo=dt.UTC)
TIMINGS = ElectionTimings(lease_duration=15, renew_deadline=10, retry_period=2)


def held_by(holder: str | None, duration: int = 15) -> LeaseRecord:
    return LeaseRecord(holder, duration, acquire_time=T0, renew_time=T0, transitions=3)


@pytest.mark.parametrize(
    ("record", "observed_for", "expected"),
    [
        (None, 0.0, LeaseVerdict.CREATE),
        (held_by("me"), 0.0, LeaseVerdict.RENEW),
        (held_by("me"), 99.0, LeaseVerdict.RENEW),
        (held_by("other"), 0.0, LeaseVerdict.WAIT),
        (held_by("other"), 14.9, LeaseVerdict.WAIT),
        (held_by("other"), 15.0, LeaseVerdict.TAKE_OVER),
        (held_by(None), 0.0, LeaseVerdict.TAKE_OVER),
        (held_by(""), 0.0, LeaseVerdict.TAKE_OVER),
        (held_by("other", duration=1), 1.0, LeaseVerdict.TAKE_OVER),
    ],
)
def test_judge(record: LeaseRecord | None, observed_for: float, expected: LeaseVerdict) -> None:
    assert judge(record, "me", observed_for) is expected


@pytest.mark.parametrize(
    ("record", "holder", "transitions", "acquired"),
    [
        (None, "me", 0, T0 + dt.timedelta(seconds=5)),
        (held_by("me"), "me", 3, T0),  # renewing keeps acquireTime and the transition count
        (held_by("other"), "me", 4, T0 + dt.timedelta(seconds=5)),
        (held_by(None), "me", 4, T0 + dt.timedelta(seconds=5)),
    ],
)
def test_claim(
    record: LeaseRecord | None, holder: str, transitions: int, acquired: dt.datetime
) -> None:
    now = T0 + dt.timedelta(seconds=5)
    new = claim(record, "me", now, TIMINGS)
    assert (new.holder, new.transitions, new.acquire_time, new.renew_time) == (
        holder,
        transitions,
        acquired,
        now,
    )
    assert new.lease_duration_seconds == 15


def test_released_frees_the_lease_for_an_immediate_take_over() -> None:
    free = released(held_by("me"))
    assert free.holder is None
    assert judge(free, "other", 0.0) is LeaseVerdict.TAKE_OVER


@pytest.mark.parametrize(
    ("verdict", "observed_for", "expected"),
    [
        (LeaseVerdict.WAIT, 0.0, 2.0),
        (LeaseVerdict.WAIT, 14.0, 1.05),  # wake right at expiry, not at the next tick
        (LeaseVerdict.WAIT, 16.0, 0.05),
        (LeaseVerdict.RENEW, 14.0, 2.0),
    ],
)
def test_sleep_until_next_try(verdict: LeaseVerdict, observed_for: float, expected: float) -> None:
    got = seconds_until_next_try(verdict, held_by("other"), observed_for, TIMINGS)
    assert got == pytest.approx(expected)


@pytest.mark.parametrize(
    ("lease", "renew", "retry"),
    [(15, 10, 10), (15, 15, 2), (10, 12, 2), (15, 10, 0)],
)
def test_unsafe_timings_are_refused(lease: float, renew: float, retry: float) -> None:
    with pytest.raises(ValueError, match="retry period < renew deadline < lease duration"):
        ElectionTimings(lease, renew, retry)


@dataclass
class MemoryLease:
    """A Lease with the API server's optimistic locking, and a switch to simulate an outage."""

    record: LeaseRecord | None = None
    version: int = 0
    down: bool = False
    writes: list[str | None] = field(default_factory=list)

    def describe(self) -> str:
        return "test/lease"

    async def get(self) -> ObservedLease | None:
        if self.down:
            raise ConnectionError("API server unreachable")
        if self.record is None:
            return None
        return ObservedLease(self.record, str(self.version))

    async def create(self, record: LeaseRecord) -> None:
        if self.record is not None:
            raise LeaseConflictError("exists")
        self._write(record)

    async def replace(self, record: LeaseRecord, resource_version: str) -> None:
        if self.down:
            raise ConnectionError("API server unreachable")
        if resource_version != str(self.version):
            raise LeaseConflictError("changed")
        self._write(record)

    def _write(self, record: LeaseRecord) -> None:
        self.record, self.version = record, self.version + 1
        self.writes.append(record.holder)


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def elector(lease: MemoryLease, identity: str, clock: Clock) -> LeaderElector:
    return LeaderElector(cast(Any, lease), identity, TIMINGS, monotonic=clock)


@pytest.mark.asyncio
async def test_only_one_of_two_candidates_leads_and_the_other_takes_over_after_expiry() -> None:
    lease, clock = MemoryLease(), Clock()
    first, second = elector(lease, "a", clock), elector(lease, "b", clock)

    await first.try_once()
    await second.try_once()
    assert (first.is_leader, second.is_leader) == (True, False)
    assert second.holder == "a"
    # "a" dies: its record stays unchanged. "b" must wait the full lease on its own clock.
    clock.now += 14.0
    await second.try_once()
    leads_before_expiry = second.is_leader
    clock.now += 1.0
    await second.try_once()
    assert (leads_before_expiry, second.is_leader) == (False, True)
    assert lease.record is not None
    assert (lease.record.holder, lease.record.transitions) == ("b", 1)


@pytest.mark.asyncio
async def test_a_renewed_lease_is_never_taken_over() -> None:
    lease, clock = MemoryLease(), Clock()
    leader, standby = elector(lease, "a", clock), elector(lease, "b", clock)

    await leader.try_once()
    for _ in range(20):  # 40 s of renewals, every retry period
        await standby.try_once()
        clock.now += 2.0
        await leader.try_once()
        assert leader.is_leader
        assert not standby.is_leader
    assert set(lease.writes) == {"a"}


@pytest.mark.asyncio
async def test_a_holder_that_cannot_renew_gives_up_before_the_lease_expires() -> None:
    lease, clock = MemoryLease(), Clock()
    leader = elector(lease, "a", clock)

    await leader.try_once()
    lease.down = True
    clock.now += TIMINGS.renew_deadline - 0.5
    assert leader.is_leader
    clock.now += 0.5
    # Past the renew deadline: not leader any more, while others still see a live lease
    # for another (lease duration - renew deadline) seconds. That gap is the fence.
    assert not leader.is_leader


@pytest.mark.asyncio
async def test_a_lost_lease_stops_the_work_and_calls_on_lost() -> None:
    lease = MemoryLease()
    timings = ElectionTimings(lease_duration=0.6, renew_deadline=0.4, retry_period=0.05)
    candidate = LeaderElector(cast(Any, lease), "a", timings)
    lost: list[bool] = []
    work_cancelled = asyncio.Event()

    async def work() -> None:
        try:
            lease.down = True  # the API server goes away once we lead
            await asyncio.sleep(30)
        finally:
            work_cancelled.set()

    await asyncio.wait_for(run_as_leader(candidate, work, lambda: lost.append(True)), 10)
    assert lost == [True]
    assert work_cancelled.is_set()


@pytest.mark.asyncio
async def test_stopping_the_leader_releases_the_lease() -> None:
    lease = MemoryLease()
    timings = ElectionTimings(lease_duration=0.6, renew_deadline=0.4, retry_period=0.05)
    candidate = LeaderElector(cast(Any, lease), "a", timings)
    started = asyncio.Event()

    async def work() -> None:
        started.set()
        await asyncio.sleep(30)

    task = asyncio.create_task(run_as_leader(candidate, work, lambda: None))
    await asyncio.wait_for(started.wait(), 5)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    assert lease.record is not None
    assert lease.record.holder is None
    assert judge(lease.record, "b", 0.0) is LeaseVerdict.TAKE_OVER
