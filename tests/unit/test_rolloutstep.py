"""The glue between a fleet and the rollout state machine: what it sees, what its decision does."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from factories import NOW, fleet, pod
from newfuse.api.rollout import HistoryEntry, RolloutPhase, RolloutReason, RolloutState, Stage
from newfuse.api.v1alpha1 import EventType, NewFuseAgent
from newfuse.core import naming
from newfuse.core.actions import Controls
from newfuse.core.metrics import AgentReports
from newfuse.core.pods import PodHealth
from newfuse.core.rollout import Decision
from newfuse.core.rolloutstep import (
    event_of,
    observation_of,
    pods_for,
    revision_to_drain,
    rollout_started_at,
    stable_revision,
    step,
    target_revision,
)
from newfuse.core.status import RedisObservation
from newfuse.wire.state import AgentMetrics, AgentState, AgentStatus, StateUpdate

ACTION = "promote@2026-11-21T12:00:00Z"


def rolling(
    phase: RolloutPhase = RolloutPhase.ANALYZING,
    annotations: dict[str, str] | None = None,
    **kw: Any,
) -> NewFuseAgent:
    """A fleet of 3 moving from "old" to "new", its status as the operator left it."""
    f = fleet(**kw)
    state = RolloutState(
        phase=phase,
        stable_revision="old",
        canary_revision="new",
        canary_agents=1,
        step_started_at=NOW,
    )
    status = f.status.model_copy(update={"rollout": state, "current_revision": "old"})
    meta = f.metadata.model_copy(update={"annotations": annotations or {}})
    return f.model_copy(update={"status": status, "metadata": meta})


def agent(revision: str, p95: float | None) -> StateUpdate:
    state = AgentState(
        id=f"a-{revision}-{p95}",
        status=AgentStatus.ACTIVE,
        revision=revision,
        metrics=AgentMetrics(latency_p95_ms=p95),
    )
    return StateUpdate(agent_id=state.id, state=state, version=1, timestamp=NOW)


def entry(reason: RolloutReason, at: dt.datetime = NOW) -> HistoryEntry:
    return HistoryEntry(
        at=at, stage=Stage.GRADUAL, step=2, canary_agents=3, reason=reason, message="why"
    )


@pytest.mark.parametrize(
    ("phase", "current", "expected"),
    [
        (RolloutPhase.ANALYZING, "cur", "old"),  # in flight: the rollout's stable revision
        (RolloutPhase.COMPLETED, "cur", "cur"),  # ended: what the fleet runs now
        (RolloutPhase.ROLLED_BACK, None, "upd"),  # nothing known: the update revision
    ],
)
def test_stable_revision(phase: RolloutPhase, current: str | None, expected: str) -> None:
    f = rolling(phase)
    f = f.model_copy(update={"status": f.status.model_copy(update={"current_revision": current})})
    assert stable_revision(f, "upd") == expected


def test_stable_revision_without_a_rollout_is_the_current_one() -> None:
    assert stable_revision(fleet(), "upd") == "upd"


def test_the_observation_counts_ready_agents_and_tasks_per_revision() -> None:
    f = rolling(capabilities=["chat"])
    pods = [pod(0, "old"), pod(1, "old", PodHealth.STARTING), pod(0, "new"), pod(1, "new")]
    reports = AgentReports(
        [agent("new", 250.0), agent("new", 900.0), agent("old", 100.0)],
        {"new": (7, 2, 1), "old": (40, 0, 0)},
        [],
    )
    seen = observation_of(f, "new", pods, reports, frozenset({"chat", "gpu"}))
    assert seen.replicas == 3
    assert (seen.update_revision, seen.current_revision) == ("new", "old")
    assert seen.ready == {"old": 1, "new": 2}
    assert seen.capabilities == {"new": {"chat"}, "old": {"chat", "gpu"}}
    new = seen.stats["new"]
    assert (new.completed, new.failed, new.rejected, new.p95_latency_ms) == (7, 2, 1, 900.0)
    assert seen.stats["old"].completed == 40
    assert seen.controls == Controls()


def test_without_redis_or_the_stable_template_the_observation_has_neither() -> None:
    f = rolling(capabilities=["chat"])
    seen = observation_of(f, "new", [], RedisObservation(reachable=False), None)
    assert seen.stats == {}
    assert set(seen.capabilities) == {"new"}


def test_the_stable_capabilities_are_not_the_update_revisions() -> None:
    f = rolling(capabilities=["chat"])
    seen = observation_of(f, "old", [], RedisObservation(reachable=True), frozenset({"gpu"}))
    assert seen.capabilities == {"old": {"chat"}}


def test_an_action_is_handled_once() -> None:
    f = rolling(RolloutPhase.ANALYZING, {naming.ROLLOUT_ACTION_ANNOTATION: ACTION})
    pods = [pod(0, "old"), pod(1, "old"), pod(0, "new")]
    reports = AgentReports([], {}, [])
    assert observation_of(f, "new", pods, reports, None).controls == Controls(promote=True)
    decision = step(f, "new", pods, reports, None, NOW)
    assert decision.state is not None
    assert decision.state.last_action == ACTION
    assert [h.reason for h in decision.happened] == [RolloutReason.PROMOTED]

    handled = f.model_copy(
        update={"status": f.status.model_copy(update={"rollout": decision.state})}
    )
    assert observation_of(handled, "new", pods, reports, None).controls == Controls()
    again = step(handled, "new", pods, reports, None, NOW)
    assert again.happened == ()


def test_without_an_action_the_state_is_not_stamped() -> None:
    decision = step(rolling(), "new", [], AgentReports([], {}, []), None, NOW)
    assert decision.state is not None
    assert decision.state.last_action is None


def test_a_revision_with_a_lost_template_keeps_its_pods_and_gets_no_new_ones() -> None:
    decision = Decision(None, {"old": 3, "new": 2})
    pods = [pod(0, "old"), pod(1, "old"), pod(0, "new")]
    plan = pods_for(decision, {"new"}, pods, paused=False)
    assert [(p.revision, p.ordinal) for p in plan.create] == [("new", 1)]
    assert not plan.delete
    everything = pods_for(decision, {"new", "old"}, pods, paused=False)
    assert sorted((p.revision, p.ordinal) for p in everything.create) == [("new", 1), ("old", 2)]
    assert pods_for(decision, {"new", "old"}, pods, paused=True).empty


@pytest.mark.parametrize(
    ("phase", "expected"),
    [(RolloutPhase.ANALYZING, "upd"), (RolloutPhase.ABORTED, "old"), (None, "upd")],
)
def test_target_revision(phase: RolloutPhase | None, expected: str) -> None:
    state = rolling(phase).status.rollout if phase is not None else None
    assert target_revision(state, "upd") == expected


def test_only_a_completed_rollout_drains_its_legacy_revision() -> None:
    previous = rolling().status.rollout
    assert revision_to_drain(previous, [entry(RolloutReason.COMPLETED)]) == "old"
    assert revision_to_drain(previous, [entry(RolloutReason.ROLLED_BACK)]) is None
    assert revision_to_drain(None, [entry(RolloutReason.COMPLETED)]) is None


@pytest.mark.parametrize(
    ("reason", "kind"),
    [
        (RolloutReason.GATE_FAILED, EventType.WARNING),
        (RolloutReason.ROLLED_BACK, EventType.WARNING),
        (RolloutReason.ABORTED, EventType.WARNING),
        (RolloutReason.GATE_PASSED, EventType.NORMAL),
        (RolloutReason.COMPLETED, EventType.NORMAL),
    ],
)
def test_event_of(reason: RolloutReason, kind: EventType) -> None:
    assert event_of(entry(reason)) == (kind, "Gradual step 2 (3 canary): why")


def test_the_rollout_started_at_its_latest_start() -> None:
    later = NOW + dt.timedelta(minutes=5)
    state = rolling().status.rollout
    assert state is not None
    assert rollout_started_at(None) is None
    assert rollout_started_at(state) is None
    history = [entry(RolloutReason.STARTED), entry(RolloutReason.RESTARTED, later),
               entry(RolloutReason.GATE_PASSED, later + dt.timedelta(minutes=1))]  # fmt: skip
    assert rollout_started_at(state.model_copy(update={"history": history})) == later
