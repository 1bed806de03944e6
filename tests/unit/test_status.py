"""Status derivation: phase, conditions with stable transition times, observedGeneration."""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pytest

from factories import NOW, fleet, pod
from newfuse.api.rollout import RolloutPhase, RolloutState
from newfuse.api.v1alpha1 import (
    ConditionType,
    FleetMetrics,
    NewFuseAgent,
    NewFuseAgentStatus,
    Phase,
    Reason,
)
from newfuse.core.planner import Plan, PodToCreate, plan, plan_revisions
from newfuse.core.pods import ObservedPod, PodHealth
from newfuse.core.status import RedisObservation, StatusInputs, derive_status


def derive(
    f: NewFuseAgent,
    pods: list[ObservedPod],
    revision: str = "rev1",
    redis: RedisObservation | None = None,
    metrics: FleetMetrics | None = None,
    acted: bool = True,
    now: dt.datetime = NOW,
    decided: Plan | None = None,
) -> NewFuseAgentStatus:
    decided = (
        decided
        if decided is not None
        else plan(f.spec.replicas, revision, pods, paused=f.spec.paused)
    )
    return derive_status(StatusInputs(f, revision, pods, decided, acted, redis, metrics, now))


@dataclass
class Case:
    pods: list[ObservedPod]
    phase: Phase
    conditions: dict[ConditionType, tuple[str, Reason]]
    replicas: int = 3
    paused: bool = False
    revision: str = "rev1"
    counts: tuple[int, int, int] | None = None  # replicas, ready, updated
    extra: dict[str, object] = field(default_factory=dict)


A, P, D, PA = (
    ConditionType.AVAILABLE,
    ConditionType.PROGRESSING,
    ConditionType.DEGRADED,
    ConditionType.PAUSED,
)
CASES = {
    "converged": Case(
        [pod(0), pod(1), pod(2)],
        Phase.AVAILABLE,
        {
            A: ("True", Reason.MINIMUM_REPLICAS_AVAILABLE),
            P: ("False", Reason.CONVERGED),
            D: ("False", Reason.PODS_HEALTHY),
        },
        counts=(3, 3, 3),
    ),
    "nothing yet": Case(
        [],
        Phase.PENDING,
        {A: ("False", Reason.MINIMUM_REPLICAS_UNAVAILABLE), P: ("True", Reason.SCALING_UP)},
        counts=(0, 0, 0),
    ),
    "scaling up with some ready": Case(
        [pod(0), pod(1)], Phase.PROGRESSING, {P: ("True", Reason.SCALING_UP)}, counts=(2, 2, 2)
    ),
    "scaling down": Case(
        [pod(0), pod(1), pod(2), pod(3)],
        Phase.PROGRESSING,
        {A: ("True", Reason.MINIMUM_REPLICAS_AVAILABLE), P: ("True", Reason.SCALING_DOWN)},
        counts=(4, 4, 4),
    ),
    "waiting for ready": Case(
        [pod(0), pod(1), pod(2, health=PodHealth.STARTING)],
        Phase.PROGRESSING,
        {A: ("False", Reason.MINIMUM_REPLICAS_UNAVAILABLE), P: ("True", Reason.WAITING_FOR_READY)},
    ),
    "new revision rolling out": Case(
        [pod(0, "old"), pod(1, "old"), pod(2, "old")],
        Phase.PROGRESSING,
        {
            A: ("True", Reason.MINIMUM_REPLICAS_AVAILABLE),
            P: ("True", Reason.NEW_REVISION_ROLLING_OUT),
        },
        revision="new",
        counts=(3, 3, 0),
    ),
    "crash looping is degraded": Case(
        [pod(0), pod(1), pod(2, health=PodHealth.CRASH_LOOPING)],
        Phase.DEGRADED,
        {D: ("True", Reason.PODS_CRASH_LOOPING)},
    ),
    "an OOM-killed crash loop names the memory limit": Case(
        [pod(0), pod(1), pod(2, health=PodHealth.CRASH_LOOPING, last_exit="OOMKilled")],
        Phase.DEGRADED,
        {D: ("True", Reason.PODS_OOM_KILLED)},
    ),
    "failed is degraded": Case(
        [pod(0), pod(1), pod(2, health=PodHealth.FAILED)],
        Phase.DEGRADED,
        {D: ("True", Reason.PODS_FAILED)},
    ),
    "paused": Case(
        [pod(0)],
        Phase.PAUSED,
        {PA: ("True", Reason.SPEC_PAUSED), P: ("False", Reason.SPEC_PAUSED)},
        paused=True,
    ),
    "terminating pods do not count": Case(
        [pod(0), pod(1), pod(2, terminating=True)],
        Phase.PROGRESSING,
        {P: ("True", Reason.SCALING_UP)},
        counts=(2, 2, 2),
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_phase_and_conditions(case: Case) -> None:
    status = derive(fleet(replicas=case.replicas, paused=case.paused), case.pods, case.revision)
    assert status.phase == case.phase
    got = {c.type: (c.status.value, c.reason) for c in status.conditions}
    for kind, expected in case.conditions.items():
        assert got[kind] == expected, kind
    if case.counts:
        assert (status.replicas, status.ready_replicas, status.updated_replicas) == case.counts
    assert status.update_revision == case.revision
    assert all(c.observed_generation == 1 for c in status.conditions)


def test_transition_time_moves_only_when_status_flips() -> None:
    f = fleet(replicas=2)
    first = derive(f, [pod(0)])
    later = NOW + dt.timedelta(minutes=5)
    f2 = f.model_copy(update={"status": first})
    same = derive(f2, [pod(0)], now=later)
    available = {c.type: c for c in same.conditions}[ConditionType.AVAILABLE]
    assert available.status.value == "False"
    assert available.last_transition_time == NOW
    flipped = derive(f2, [pod(0), pod(1)], now=later)
    available = {c.type: c for c in flipped.conditions}[ConditionType.AVAILABLE]
    assert available.status.value == "True"
    assert available.last_transition_time == later


def test_observed_generation_only_when_acted_on() -> None:
    f = fleet(generation=7)
    assert derive(f, [], acted=True).observed_generation == 7
    assert derive(f, [], acted=False).observed_generation is None


def test_redis_condition_and_metrics_kept_through_an_outage() -> None:
    metrics = FleetMetrics(tasks_completed=5, reporting_agents=2)
    up = derive(fleet(), [pod(0), pod(1), pod(2)], redis=RedisObservation(True), metrics=metrics)
    conditions = {c.type: c for c in up.conditions}
    assert conditions[ConditionType.REDIS_CONNECTED].status.value == "True"
    assert conditions[ConditionType.AGENTS_HEARTBEATING].reason == Reason.HEARTBEATS_FRESH
    down = derive(
        fleet().model_copy(update={"status": up}),
        [pod(0), pod(1), pod(2)],
        redis=RedisObservation(False, "ConnectionError: refused"),
        metrics=None,
    )
    conditions = {c.type: c for c in down.conditions}
    assert conditions[ConditionType.REDIS_CONNECTED].status.value == "False"
    assert conditions[ConditionType.REDIS_CONNECTED].reason == Reason.REDIS_UNREACHABLE
    assert "refused" in conditions[ConditionType.REDIS_CONNECTED].message
    assert down.metrics == metrics, "last known metrics stay during an outage"
    assert down.phase == Phase.AVAILABLE, "a Redis outage does not make healthy pods unavailable"


def test_stale_heartbeats_become_a_condition() -> None:
    status = derive(
        fleet(), [pod(0), pod(1), pod(2)], metrics=FleetMetrics(stale_agents=1, reporting_agents=2)
    )
    cond = {c.type: c for c in status.conditions}[ConditionType.AGENTS_HEARTBEATING]
    assert (cond.status.value, cond.reason) == ("False", Reason.HEARTBEATS_STALE)


def test_current_revision_follows_convergence() -> None:
    old = derive(fleet(replicas=1), [pod(0, "old")], revision="old")
    assert old.current_revision == "old"
    rolling = derive(
        fleet(replicas=1).model_copy(update={"status": old}),
        [pod(0, "old")],
        revision="new",
        decided=Plan(create=(PodToCreate("new", 0),)),
    )
    assert (rolling.current_revision, rolling.update_revision) == ("old", "new")
    done = derive(
        fleet(replicas=1).model_copy(update={"status": rolling}), [pod(0, "new")], revision="new"
    )
    assert done.current_revision == "new"


def test_selector_and_capabilities() -> None:
    status = derive(fleet(capabilities=["summarize", "chat"]), [pod(0), pod(1), pod(2)])
    assert "newfuse.io/fleet=demo" in (status.selector or "")
    assert status.capabilities == ["chat", "summarize"]
    assert derive(fleet(capabilities=["chat"]), []).capabilities == []


def _rollout(phase: RolloutPhase) -> RolloutState:
    return RolloutState(
        phase=phase,
        stable_revision="old",
        canary_revision="new",
        step_started_at=NOW,
        message="why: 50.0%",
    )


@pytest.mark.parametrize(
    ("phase", "pods", "target", "expected_phase", "conditions"),
    [
        (
            RolloutPhase.ANALYZING,
            [pod(0, "old"), pod(1, "old"), pod(0, "new")],
            "new",
            Phase.PROGRESSING,
            {P: ("True", Reason.ROLLOUT_IN_PROGRESS), D: ("False", Reason.PODS_HEALTHY)},
        ),
        (
            RolloutPhase.ROLLED_BACK,
            [pod(0, "old"), pod(1, "old")],
            "old",
            Phase.DEGRADED,
            {P: ("False", Reason.ROLLED_BACK), D: ("True", Reason.ROLLED_BACK)},
        ),
        (
            RolloutPhase.ABORTED,
            [pod(0, "old"), pod(1, "old")],
            "old",
            Phase.DEGRADED,
            {D: ("True", Reason.ROLLOUT_ABORTED)},
        ),
        (
            RolloutPhase.PAUSED,
            [pod(0, "old"), pod(0, "new")],
            "new",
            Phase.PAUSED,
            {PA: ("True", Reason.ROLLOUT_PAUSED)},
        ),
        (
            RolloutPhase.DEGRADED,
            [pod(0, "old"), pod(0, "new")],
            "new",
            Phase.DEGRADED,
            {D: ("True", Reason.ROLLOUT_DEGRADED)},
        ),
    ],
    ids=["in progress", "rolled back", "aborted", "paused", "stuck"],
)
def test_status_during_and_after_a_rollout(
    phase: RolloutPhase,
    pods: list[ObservedPod],
    target: str,
    expected_phase: Phase,
    conditions: dict[ConditionType, tuple[str, Reason]],
) -> None:
    f = fleet(replicas=2)
    decided = plan_revisions({target: 2}, pods)
    status = derive_status(
        StatusInputs(
            f,
            "new",
            pods,
            decided,
            True,
            None,
            None,
            NOW,
            rollout=_rollout(phase),
            target_revision=target,
        )
    )
    assert status.phase == expected_phase
    got = {c.type: (c.status.value, c.reason) for c in status.conditions}
    for kind, expected in conditions.items():
        assert got[kind] == expected, kind
    assert status.current_revision == "old"
    assert status.rollout is not None
    assert status.rollout.phase is phase


@pytest.mark.parametrize(
    ("last_exit", "reason", "advice"),
    [
        ("OOMKilled", Reason.PODS_OOM_KILLED, "raise spec.resources.limits.memory"),
        ("Error (exit code 3)", Reason.PODS_CRASH_LOOPING, "kubectl logs --previous demo-rev1-2"),
    ],
)
def test_degraded_message_says_what_to_do(last_exit: str, reason: Reason, advice: str) -> None:
    failing = pod(2, health=PodHealth.CRASH_LOOPING, last_exit=last_exit)
    status = derive(fleet(replicas=3), [pod(0), pod(1), failing], "rev1")
    degraded = next(c for c in status.conditions if c.type == D)
    assert (degraded.reason, advice in degraded.message) == (reason, True), degraded.message
