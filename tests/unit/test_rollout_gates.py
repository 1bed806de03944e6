"""The rollout's arithmetic on its own: gate verdicts, agent allocation and canary sizes.

A gate passes, fails or is inconclusive from the canary's (and the stable revision's) success
rate, error rate, p95 latency and refusals; allocation respects maxSurge, maxUnavailable and the
capability budget; the initial canary is sized by count or percent. The state machine that uses
them is in test_rollout_decide.py.
"""

from __future__ import annotations

import dataclasses

import pytest

from newfuse.api.rollout import (
    GateResult,
    GateSpec,
    InitialStage,
    PhasedPolicy,
    RevisionCounts,
    RolloutPhase,
    RolloutState,
    Stage,
)
from newfuse.core.allocation import allocate, initial_canary
from newfuse.core.gates import RevisionStats, evaluate_gate, revision_stats
from newfuse.core.rollout import Observation, decide
from phased_policy import POLICY, T0, at


@pytest.mark.parametrize(
    ("canary", "stable", "gate", "result"),
    [
        (
            RevisionStats(95, 5),
            None,
            GateSpec(min_tasks=10, min_success_rate=0.95),
            GateResult.PASSED,
        ),
        (
            RevisionStats(94, 6),
            None,
            GateSpec(min_tasks=10, min_success_rate=0.95),
            GateResult.FAILED,
        ),
        (RevisionStats(9, 0), None, GateSpec(min_tasks=10), GateResult.INCONCLUSIVE),
        (RevisionStats(0, 0), None, GateSpec(min_tasks=0), GateResult.PASSED),
        (
            RevisionStats(90, 10),
            RevisionStats(98, 2),
            GateSpec(min_tasks=10, min_success_rate=0.8),
            GateResult.FAILED,
        ),
        (
            RevisionStats(95, 5),
            RevisionStats(98, 2),
            GateSpec(min_tasks=10, min_success_rate=0.8),
            GateResult.PASSED,
        ),
        (
            RevisionStats(99, 1),
            None,
            GateSpec(min_tasks=10, max_error_rate=0.005),
            GateResult.FAILED,
        ),
        (
            RevisionStats(100, 0, 900.0),
            None,
            GateSpec(min_tasks=10, max_p95_latency_ms=500),
            GateResult.FAILED,
        ),
        (
            RevisionStats(100, 0, 400.0),
            None,
            GateSpec(min_tasks=10, max_p95_latency_ms=500),
            GateResult.PASSED,
        ),
        (
            RevisionStats(0, 0, None, rejected=20),
            RevisionStats(98, 2),
            GateSpec(min_tasks=10, min_success_rate=0.8),
            GateResult.FAILED,
        ),
    ],
    ids=[
        "success ok",
        "success low",
        "too few",
        "no minimum",
        "worse than stable",
        "within margin of stable",
        "error rate high",
        "p95 high",
        "p95 ok",
        "refuses every task",
    ],
)
def test_gate_arithmetic(
    canary: RevisionStats, stable: RevisionStats | None, gate: GateSpec, result: GateResult
) -> None:
    if canary.rejected:
        verdict = evaluate_gate(gate, canary, stable, at(0))
        assert "20 of 20 refused unrun" in verdict.reason
    assert evaluate_gate(gate, canary, stable, T0).result is result


@pytest.mark.parametrize(
    ("policy_update", "replicas", "target", "ready", "stable_caps", "canary_caps", "expected"),
    [
        ({}, 6, 1, 0, {"a"}, {"a"}, (6, 1)),
        ({}, 6, 1, 1, {"a"}, {"a"}, (5, 1)),
        ({}, 6, 3, 1, {"a"}, {"a"}, (5, 2)),
        ({"max_surge": 0, "max_unavailable": 1}, 6, 2, 0, {"a"}, {"a"}, (5, 1)),
        ({"max_unavailable": 2, "capability_budget": 1}, 2, 2, 0, {"gpu"}, {"gpu"}, (1, 2)),
        ({"max_unavailable": 6, "capability_budget": 2}, 6, 6, 4, {"a", "gpu"}, {"a"}, (2, 5)),
        ({}, 6, 6, 6, {"a"}, {"a"}, (0, 6)),
        ({"max_surge": 0, "max_unavailable": 0}, 6, 1, 0, {"a"}, {"a"}, (6, 0)),
    ],
    ids=[
        "canary first (surge)",
        "stable goes once canary ready",
        "surge cap",
        "unavailable allowance",
        "capability only 2 agents have",
        "capability the canary lacks",
        "all moved",
        "no surge, no unavailability: nothing moves",
    ],
)
def test_allocation_respects_surge_unavailable_and_capability_budget(
    policy_update: dict[str, int],
    replicas: int,
    target: int,
    ready: int,
    stable_caps: set[str],
    canary_caps: set[str],
    expected: tuple[int, int],
) -> None:
    policy = POLICY.model_copy(update=policy_update)
    assert (
        allocate(policy, replicas, target, ready, frozenset(stable_caps), frozenset(canary_caps))
        == expected
    )


@pytest.mark.parametrize(
    ("initial", "replicas", "expected"),
    [
        (InitialStage(), 6, 1),
        (InitialStage(count=2), 6, 2),
        (InitialStage(percent=10), 6, 1),
        (InitialStage(percent=50), 5, 3),
        (InitialStage(count=9), 4, 4),
        (InitialStage(percent=10), 101, 11),
    ],
)
def test_initial_canary_size(initial: InitialStage, replicas: int, expected: int) -> None:
    assert initial_canary(replace_policy(initial), replicas) == expected


def replace_policy(initial: InitialStage) -> PhasedPolicy:
    return POLICY.model_copy(update={"initial": initial})


def test_the_canary_share_of_traffic_is_reported_with_the_verdict() -> None:
    verdict = evaluate_gate(GateSpec(min_tasks=1), RevisionStats(20, 0), RevisionStats(60, 0), T0)
    assert verdict.measured.canary_share == 0.25
    assert (
        evaluate_gate(GateSpec(min_tasks=0), RevisionStats(), None, T0).measured.canary_share
        is None
    )


@pytest.mark.parametrize(
    ("baseline", "expected"),
    [
        (None, RevisionStats(10, 4, 99.0, 2)),
        (RevisionCounts(completed=3, failed=1, rejected=1), RevisionStats(7, 3, 99.0, 1)),
        # Counters reset (a Redis that lost them): never a negative count.
        (RevisionCounts(completed=30, failed=9, rejected=5), RevisionStats(0, 0, 99.0, 0)),
    ],
    ids=["no baseline", "tasks since the baseline", "baseline above the counters"],
)
def test_a_gate_counts_only_the_tasks_since_its_baseline(
    baseline: RevisionCounts | None, expected: RevisionStats
) -> None:
    assert RevisionStats(10, 4, 99.0, 2).since(baseline) == expected


def test_a_passed_gate_forgets_the_failures_before_it() -> None:
    policy = POLICY.model_copy(
        update={"initial": InitialStage(soak_seconds=60, gate=GateSpec(min_tasks=10,
                                                                       failure_limit=3))}
    )  # fmt: skip
    state = RolloutState(
        phase=RolloutPhase.ANALYZING,
        stable_revision="old",
        canary_revision="new",
        canary_agents=1,
        step_started_at=T0,
        consecutive_failures=2,
    )
    seen = Observation(
        replicas=6,
        update_revision="new",
        current_revision="old",
        ready={"old": 5, "new": 1},
        stats={"new": RevisionStats(50, 0)},
    )
    decision = decide(policy, seen, state, at(61))
    assert decision.state is not None
    assert decision.state.stage is Stage.GRADUAL
    assert decision.state.consecutive_failures == 0


EXACT = GateSpec(min_tasks=1, min_success_rate=None)


@pytest.mark.parametrize(
    ("gate", "canary", "stable", "result"),
    [
        (GateSpec(min_tasks=1), RevisionStats(0, 0), None, GateResult.INCONCLUSIVE),
        (GateSpec(min_tasks=1), RevisionStats(1, 0), None, GateResult.PASSED),
        (GateSpec(min_tasks=10), RevisionStats(10, 0), None, GateResult.PASSED),
        (EXACT.model_copy(update={"max_error_rate": 0.5}), RevisionStats(1, 1), None,
         GateResult.PASSED),
        (EXACT.model_copy(update={"max_error_rate_increase": 0.25}), RevisionStats(1, 1),
         RevisionStats(3, 1), GateResult.PASSED),
        (EXACT.model_copy(update={"max_p95_latency_ms": 250.0}), RevisionStats(4, 0, 250.0),
         None, GateResult.PASSED),
        (EXACT.model_copy(update={"max_p95_latency_ms": 0.5}), RevisionStats(4, 0, None), None,
         GateResult.PASSED),
    ],
    ids=["one task wanted, none yet", "one task wanted, one done", "exactly min tasks",
         "error rate at the maximum", "increase at the maximum", "p95 at the maximum",
         "no p95 reported"],
)  # fmt: skip
def test_a_gate_fails_only_beyond_its_limits(
    gate: GateSpec, canary: RevisionStats, stable: RevisionStats | None, result: GateResult
) -> None:
    assert evaluate_gate(gate, canary, stable, T0).result is result


def test_measured_rates_and_share_have_four_decimals() -> None:
    measured = evaluate_gate(EXACT, RevisionStats(2, 1), RevisionStats(4, 2), T0).measured
    assert measured.error_rate == 0.3333
    assert measured.success_rate == 0.6667
    assert measured.stable_error_rate == 0.3333
    assert measured.canary_share == 0.3333


def test_refusals_are_named_only_in_a_failed_verdict() -> None:
    passed = evaluate_gate(GateSpec(min_tasks=1), RevisionStats(99, 0, None, 1), None, T0)
    assert passed.result is GateResult.PASSED
    assert "refused" not in passed.reason
    failed = evaluate_gate(GateSpec(min_tasks=1), RevisionStats(1, 1), None, T0)
    assert failed.result is GateResult.FAILED
    assert "refused" not in failed.reason


def test_a_revision_with_latency_but_no_counters_has_no_tasks() -> None:
    assert revision_stats({}, {"new": 5.0}) == {"new": RevisionStats(0, 0, 5.0, 0)}


def test_revision_stats_cannot_be_edited() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        RevisionStats(1, 0).completed = 2  # type: ignore[misc]
