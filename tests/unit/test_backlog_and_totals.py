"""status.backlog from the facts Redis shows, and fleet totals that never go backwards."""

from __future__ import annotations

import pytest

from factories import NOW, fleet
from newfuse.api.tasks import Backlog, PriorityBacklog
from newfuse.api.v1alpha1 import FleetMetrics
from newfuse.core.backlog import (
    GroupInfo,
    StreamObservation,
    TaskObservation,
    age_seconds,
    entry_ms,
    fold_backlog,
    waiting_of,
)
from newfuse.core.metrics import TaskCounters, settle_totals
from newfuse.core.planner import Plan
from newfuse.core.status import RedisObservation, StatusInputs, derive_status

T0 = 1_700_000_000_000  # a Redis clock reading, in ms


def group(pending: int = 0, lag: int | None = 0, last: str = "0-0") -> GroupInfo:
    return GroupInfo(pending=pending, lag=lag, last_delivered_id=last)


@pytest.mark.parametrize(
    ("stream", "waiting"),
    [
        (StreamObservation("normal", 0, None), 0),
        # No agent has created the group yet: everything on the stream waits.
        (StreamObservation("normal", 7, None), 7),
        (StreamObservation("normal", 7, group(pending=0, lag=7)), 7),
        (StreamObservation("normal", 10, group(pending=3, lag=4)), 4),
        # Redis 7.0 gives no lag after a delete past the group's position: length - pending.
        (StreamObservation("normal", 9, group(pending=2, lag=None)), 7),
        (StreamObservation("normal", 2, group(pending=3, lag=None)), 0),
        (StreamObservation("normal", 5, group(pending=0, lag=-1)), 0),
    ],
)
def test_waiting_of_a_stream(stream: StreamObservation, waiting: int) -> None:
    assert waiting_of(stream) == waiting


@pytest.mark.parametrize(
    ("entry_id", "now_ms", "age"),
    [
        (None, T0, None),
        (f"{T0}-0", T0, 0),
        (f"{T0 - 999}-4", T0, 0),
        (f"{T0 - 1000}-0", T0, 1),
        (f"{T0 - 61_500}-0", T0, 61),
        (f"{T0 + 5000}-0", T0, 0),  # an entry "from the future" (clock moved back) waited 0 s
        ("not-an-id", T0, None),
    ],
)
def test_age_of_an_entry(entry_id: str | None, now_ms: int, age: int | None) -> None:
    assert age_seconds(entry_id, now_ms) == age


def test_entry_ms() -> None:
    assert entry_ms("1718000000000-3") == 1718000000000
    assert entry_ms("x-1") is None


def _row(priority: str, waiting: int, inflight: int, oldest: int | None) -> PriorityBacklog:
    return PriorityBacklog(
        priority=priority, waiting=waiting, inflight=inflight, oldest_waiting_seconds=oldest
    )


FOLD_CASES = {
    "nothing exists yet": (
        TaskObservation([StreamObservation(p, 0, None) for p in ("high", "normal", "low")], 0, T0),
        Backlog(
            by_priority=[
                _row("high", 0, 0, None),
                _row("normal", 0, 0, None),
                _row("low", 0, 0, None),
            ]
        ),
    ),
    "queued before any agent started": (
        TaskObservation(
            [
                StreamObservation("high", 0, None),
                StreamObservation("normal", 5, None, f"{T0 - 42_000}-0"),
                StreamObservation("low", 2, None, f"{T0 - 90_000}-1"),
            ],
            0,
            T0,
        ),
        Backlog(
            waiting=7,
            oldest_waiting_seconds=90,
            by_priority=[_row("high", 0, 0, None), _row("normal", 5, 0, 42), _row("low", 2, 0, 90)],
        ),
    ),
    "flowing, with retries": (
        TaskObservation(
            [
                StreamObservation("high", 1, group(pending=1, lag=0)),
                StreamObservation("normal", 20, group(pending=4, lag=None), f"{T0 - 3_000}-0"),
                StreamObservation("low", 0, group()),
            ],
            3,
            T0,
        ),
        Backlog(
            waiting=16,
            inflight=5,
            retrying=3,
            oldest_waiting_seconds=3,
            by_priority=[
                _row("high", 0, 1, None),
                _row("normal", 16, 4, 3),
                _row("low", 0, 0, None),
            ],
        ),
    ),
    # The entry read after the counts may already be gone (delivered meanwhile): no age then.
    "waiting without a first entry": (
        TaskObservation([StreamObservation("normal", 1, group(lag=1))], 0, T0),
        Backlog(waiting=1, by_priority=[_row("normal", 1, 0, None)]),
    ),
}


@pytest.mark.parametrize(("observation", "expected"), FOLD_CASES.values(), ids=FOLD_CASES.keys())
def test_fold_backlog(observation: TaskObservation, expected: Backlog) -> None:
    assert fold_backlog(observation) == expected


def metrics(
    completed: int = 0, failed: int = 0, handled: int = 0, duplicates: int = 0
) -> FleetMetrics:
    finished = completed + failed
    return FleetMetrics(
        tasks_completed=completed,
        tasks_failed=failed,
        requests_handled=handled,
        duplicate_executions=duplicates,
        error_rate=round(failed / finished, 4) if finished else 0.0,
        reporting_agents=2,
    )


TOTALS_CASES = {
    "first look, counters there": (
        metrics(5, 1, 6),
        TaskCounters(9, 1, 2),
        None,
        metrics(9, 1, 6, 2),
    ),
    "no counters yet: the agents' sum": (metrics(5, 1, 6), None, None, metrics(5, 1, 6)),
    # An agent restarted: its own counters began again at 0, the fleet's did not.
    "agent restarted": (
        metrics(3, 0, 3),
        TaskCounters(50, 2),
        metrics(48, 2, 50),
        metrics(50, 2, 50),
    ),
    "counters lost (Redis flushed)": (
        metrics(3),
        None,
        metrics(48, 2, 50, 1),
        metrics(48, 2, 50, 1),
    ),
    "counters behind the status": (
        metrics(),
        TaskCounters(10),
        metrics(12, 1, 13),
        metrics(12, 1, 13),
    ),
    "agent sum above counters: counters win": (metrics(60), TaskCounters(55), None, metrics(55)),
}


@pytest.mark.parametrize(
    ("folded", "counters", "previous", "expected"), TOTALS_CASES.values(), ids=TOTALS_CASES.keys()
)
def test_settle_totals(
    folded: FleetMetrics,
    counters: TaskCounters | None,
    previous: FleetMetrics | None,
    expected: FleetMetrics,
) -> None:
    settled = settle_totals(folded, counters, previous)
    assert settled == expected
    assert settled.reporting_agents == folded.reporting_agents, "only the totals are settled"


def test_totals_never_decrease_over_any_sequence_of_readings() -> None:
    readings: list[tuple[FleetMetrics, TaskCounters | None]] = [
        (metrics(4, 0, 4), None),
        (metrics(6, 1, 7), TaskCounters(6, 1)),
        (metrics(0, 0, 0), TaskCounters(8, 1)),  # every agent restarted
        (metrics(2, 0, 2), None),  # counters gone
        (metrics(3, 0, 3), TaskCounters(11, 3, 1)),
    ]
    previous: FleetMetrics | None = None
    for folded, counters in readings:
        settled = settle_totals(folded, counters, previous)
        if previous is not None:
            for field in ("tasks_completed", "tasks_failed", "requests_handled"):
                assert getattr(settled, field) >= getattr(previous, field), field
        previous = settled
    assert previous is not None
    assert (previous.tasks_completed, previous.tasks_failed) == (11, 3)
    assert previous.duplicate_executions == 1
    assert previous.error_rate == round(3 / 14, 4)


def _status(backlog: Backlog | None, previous: Backlog | None) -> Backlog | None:
    current = fleet(replicas=0)
    current = current.model_copy(
        update={"status": current.status.model_copy(update={"backlog": previous})}
    )
    return derive_status(
        StatusInputs(
            fleet=current,
            update_revision="rev1",
            pods=[],
            plan=Plan(),
            acted_on_generation=True,
            redis=RedisObservation(reachable=backlog is not None),
            metrics=None,
            now=NOW,
            backlog=backlog,
        )
    ).backlog


def test_status_shows_the_backlog_and_keeps_the_last_one_through_an_outage() -> None:
    seen = Backlog(waiting=4, oldest_waiting_seconds=12)
    assert _status(seen, None) == seen
    assert _status(None, seen) == seen
    assert _status(Backlog(), seen) == Backlog()
