"""The work queue's two lanes, and the resync period that stretches with the fleet count.

At 10,000 fleets a 15-second resync asks for more reconciles than an operator does: these are the
two decisions that keep a new fleet's events from waiting behind it.
"""

from __future__ import annotations

import asyncio

import pytest

from newfuse.core.resync import resync_period
from newfuse.runtime.workqueue import WorkQueue

pytestmark = pytest.mark.unit


async def _drain(queue: WorkQueue, n: int) -> list[str]:
    keys = [await asyncio.wait_for(queue.get(), 1) for _ in range(n)]
    for key in keys:
        queue.done(key)
    return keys


@pytest.mark.parametrize(
    ("fleets", "expected"),
    [(0, 15.0), (1_000, 15.0), (1_500, 15.0), (2_000, 20.0), (10_000, 100.0)],
)
def test_the_resync_period_stretches_past_the_rate_it_may_use(fleets: int, expected: float) -> None:
    assert resync_period(fleets, 15.0, 100.0) == expected


@pytest.mark.asyncio
async def test_event_keys_go_before_resync_keys() -> None:
    q = WorkQueue()
    for key in ("r1", "r2", "r3"):
        q.add(key, background=True)
    q.add("e1")
    q.add("r2")  # an event for a key the resync queued: it moves to the front lane
    q.add("e2")
    assert len(q) == 5
    assert await _drain(q, 5) == ["e1", "r2", "e2", "r1", "r3"]
    assert len(q) == 0


@pytest.mark.asyncio
async def test_a_resync_never_demotes_a_waiting_event_key() -> None:
    q = WorkQueue()
    q.add("r1", background=True)
    q.add("e1")
    q.add("e1", background=True)
    assert await _drain(q, 2) == ["e1", "r1"]


@pytest.mark.asyncio
async def test_a_promoted_key_is_never_handed_out_twice_or_while_in_a_worker() -> None:
    q = WorkQueue()
    q.add("k", background=True)
    q.add("k")  # promoted: a stale copy stays in the back lane
    assert await asyncio.wait_for(q.get(), 1) == "k"
    q.add("k", background=True)  # asked for again while a worker has it
    q.add("other", background=True)
    assert await asyncio.wait_for(q.get(), 1) == "other", "not the stale copy, not k again"
    q.done("other")
    q.done("k")  # now k comes back, once
    assert await _drain(q, 1) == ["k"]
    q.add("last")
    assert await _drain(q, 1) == ["last"]


@pytest.mark.asyncio
async def test_a_delayed_resync_lands_in_the_back_lane() -> None:
    q = WorkQueue()
    q.add_after("r", 0.01, background=True)

    async def fired() -> None:
        while len(q) == 0:
            await asyncio.sleep(0.005)

    await asyncio.wait_for(fired(), 1)
    q.add("e")
    assert await _drain(q, 2) == ["e", "r"]
