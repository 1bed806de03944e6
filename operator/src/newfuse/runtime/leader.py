"""Leader election at run time: wait for the Lease, keep renewing it, and fence the work on it.

Standby replicas keep their watch caches warm (kopf runs in every replica and only feeds caches),
but their controller does not start until they hold the Lease, so failover costs one lease
expiry and no cache warm-up. The decisions are in newfuse.core.leader; this module only loops,
reads the clocks and talks to the API through the Lease adapter.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Callable, Coroutine
from typing import Any

from newfuse import observability as obs
from newfuse.adapters.lease import LeaseClient, LeaseConflictError
from newfuse.core.leader import (
    ElectionTimings,
    LeaseVerdict,
    claim,
    judge,
    released,
    seconds_until_next_try,
)

log = logging.getLogger("newfuse.leader")


def wall_now() -> dt.datetime:
    """Wall-clock time for the Lease's acquireTime/renewTime fields (informational only)."""
    return dt.datetime.now(dt.UTC)


class LeaderElector:
    """Acquire, hold and release one Lease under a unique identity."""

    def __init__(
        self,
        leases: LeaseClient,
        identity: str,
        timings: ElectionTimings,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        """Compete for ``leases`` as ``identity`` with ``timings``."""
        self.leases, self.identity, self.timings = leases, identity, timings
        self._monotonic = monotonic
        self._seen_version: str | None = None
        self._seen_at = monotonic()
        self._renewed_at: float | None = None
        self.holder: str | None = None

    @property
    def is_leader(self) -> bool:
        """True while the last write of ours is within the renew deadline."""
        return (
            self._renewed_at is not None
            and self._monotonic() - self._renewed_at < self.timings.renew_deadline
        )

    async def try_once(self) -> float:
        """One read-decide-write round; returns how long to sleep before the next one."""
        started = self._monotonic()
        observed = await self.leases.get()
        version = observed.resource_version if observed else None
        if version != self._seen_version:
            # Expiry is measured from when *we* first saw this record, never from the holder's
            # renewTime: that would trust another machine's clock.
            self._seen_version, self._seen_at = version, started
        record = observed.record if observed else None
        self.holder = record.holder if record else None
        observed_for = started - self._seen_at
        verdict = judge(record, self.identity, observed_for)
        if verdict is LeaseVerdict.WAIT:
            self._renewed_at = None
            return seconds_until_next_try(verdict, record, observed_for, self.timings)
        new = claim(record, self.identity, wall_now(), self.timings)
        try:
            if observed is None:
                await self.leases.create(new)
            else:
                await self.leases.replace(new, observed.resource_version)
        except LeaseConflictError:
            # Another candidate wrote first; re-read on the next round.
            self._renewed_at = None
            return self.timings.retry_period
        if verdict is not LeaseVerdict.RENEW or self._renewed_at is None:
            log.info(
                "acquired leader lease %s (%s, previous holder %s)",
                self.leases.describe(),
                verdict.value,
                record.holder if record else None,
                extra={"identity": self.identity},
            )
        # Counting from *before* the read is conservative: others see the lease live for longer.
        self._renewed_at, self.holder = started, self.identity
        return self.timings.retry_period

    async def acquire(self) -> None:
        """Return once this process holds the Lease (retrying through API errors)."""
        log.info(
            "waiting for leader lease %s", self.leases.describe(), extra={"identity": self.identity}
        )
        while True:
            try:
                delay = await asyncio.wait_for(self.try_once(), self.timings.retry_period * 2)
            except Exception as exc:
                log.warning("leader election round failed: %s", exc)
                delay = self.timings.retry_period
            if self.is_leader:
                return
            await asyncio.sleep(delay)

    async def hold(self) -> None:
        """Renew every retry period; return as soon as leadership is lost or cannot be proven."""
        while True:
            await asyncio.sleep(self.timings.retry_period)
            assert self._renewed_at is not None
            budget = self.timings.renew_deadline - (self._monotonic() - self._renewed_at)
            try:
                await asyncio.wait_for(self.try_once(), max(0.05, budget))
            except Exception as exc:
                log.warning("could not renew leader lease %s: %s", self.leases.describe(), exc)
            if not self.is_leader:
                return

    async def release(self) -> None:
        """Hand the Lease back so a standby takes over at once (best effort, bounded)."""
        if self._renewed_at is None:
            return
        self._renewed_at = None
        try:
            observed = await asyncio.wait_for(self.leases.get(), self.timings.retry_period)
            if observed and observed.record.holder == self.identity:
                await asyncio.wait_for(
                    self.leases.replace(released(observed.record), observed.resource_version),
                    self.timings.retry_period,
                )
                log.info("released leader lease %s", self.leases.describe())
        except Exception as exc:
            log.warning("could not release leader lease %s: %s", self.leases.describe(), exc)


async def run_as_leader(
    elector: LeaderElector,
    work: Callable[[], Coroutine[Any, Any, None]],
    on_lost: Callable[[], None],
) -> None:
    """Run ``work`` only while holding the Lease; call ``on_lost`` if leadership slips away.

    ``on_lost`` must stop the process (controller-runtime exits too): cancelling in place could
    still let an in-flight write land after the lease has passed to another replica.
    """
    obs.LEADER.set(0)
    await elector.acquire()
    obs.LEADER.set(1)
    work_task = asyncio.create_task(work(), name="leader-work")
    hold_task = asyncio.create_task(elector.hold(), name="leader-renew")
    try:
        done, _ = await asyncio.wait({work_task, hold_task}, return_when=asyncio.FIRST_COMPLETED)
        if hold_task in done:
            obs.LEADER.set(0)
            log.error(
                "lost leader lease %s (now held by %s); stopping",
                elector.leases.describe(),
                elector.holder,
            )
            on_lost()
        else:
            work_task.result()
    finally:
        for task in (work_task, hold_task):
            task.cancel()
        await asyncio.gather(work_task, hold_task, return_exceptions=True)
        await elector.release()
        obs.LEADER.set(0)
