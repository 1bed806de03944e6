"""The rollout state machine, transition by transition, and its gate and allocation arithmetic."""

from __future__ import annotations

import datetime as dt

import pytest

from newfuse.api.rollout import (
    GateResult,
    GateSpec,
    GradualStage,
    InitialStage,
    PhasedPolicy,
    RolloutPhase,
    RolloutReason,
    RolloutState,
    Stage,
)
from newfuse.core.actions import Controls
from newfuse.core.allocation import allocate, initial_canary
from newfuse.core.gates import RevisionStats, evaluate_gate
from newfuse.core.rollout import Decision, Observation, decide
from newfuse.core.rolloutstep import rollout_started_at

T0 = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
CAPS = {"old": frozenset({"chat"}), "new": frozenset({"chat"})}
POLICY = PhasedPolicy(
    initial=InitialStage(soak_seconds=60, gate=GateSpec(min_tasks=10)),
    gradual=GradualStage(step=1, interval_seconds=30, gate=GateSpec(min_tasks=10)),
    progress_deadline_seconds=300,
)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)


def observe(
    ready: dict[str, int] | None = None, stats: dict[str, RevisionStats] | None = None, **kw: object
) -> Observation:
    values: dict[str, object] = {
        "replicas": 6,
        "update_revision": "new",
        "current_revision": "old",
        "ready": ready if ready is not None else {"old": 6},
        "capabilities": CAPS,
        "stats": stats or {},
    }
    values.update(kw)
    return Observation(**values)  # type: ignore[arg-type]


def started() -> RolloutState:
    decision = decide(POLICY, observe(), None, T0)
    assert decision.state is not None
    return decision.state


def in_stage(stage: Stage, canary: int, step: int, **kw: object) -> RolloutState:
    return started().model_copy(
        update={"stage": stage, "canary_agents": canary, "step": step, **kw}
    )


def reasons(decision: Decision) -> list[RolloutReason]:
    return [h.reason for h in decision.happened]


GOOD = {"new": RevisionStats(completed=50, failed=0), "old": RevisionStats(completed=500, failed=5)}
# 40 % errors and 60 % success: different numbers, so a swapped rate cannot pass.
BAD = {"new": RevisionStats(completed=30, failed=20), "old": RevisionStats(completed=500, failed=5)}


def test_no_change_is_steady_state() -> None:
    decision = decide(POLICY, observe(update_revision="old"), None, T0)
    assert decision.state is None
    assert decision.desired == {"old": 6}


def test_a_new_revision_starts_phase_one_with_one_canary_and_one_surge_pod() -> None:
    decision = decide(POLICY, observe(), None, T0)
    assert decision.state is not None
    assert (decision.state.phase, decision.state.stage, decision.state.canary_agents) == (
        RolloutPhase.PROGRESSING,
        Stage.INITIAL,
        1,
    )
    assert decision.desired == {"old": 6, "new": 1}
    assert reasons(decision) == [RolloutReason.STARTED]
    assert decision.state.stable_revision == "old"


def test_a_stable_agent_goes_only_once_the_canary_is_ready() -> None:
    waiting = decide(POLICY, observe({"old": 6, "new": 0}), started(), at(10))
    assert waiting.state is not None
    assert (waiting.state.phase, waiting.desired) == (
        RolloutPhase.PROGRESSING,
        {"old": 6, "new": 1},
    )
    soaking = decide(POLICY, observe({"old": 6, "new": 1}), started(), at(10))
    assert soaking.state is not None
    assert (soaking.state.phase, soaking.desired) == (RolloutPhase.ANALYZING, {"old": 5, "new": 1})


def test_no_verdict_before_min_tasks() -> None:
    decision = decide(
        POLICY, observe({"old": 5, "new": 1}, {"new": RevisionStats(3, 0)}), started(), at(61)
    )
    assert decision.state is not None
    assert decision.state.phase is RolloutPhase.ANALYZING
    assert decision.state.last_verdict is not None
    assert decision.state.last_verdict.result is GateResult.INCONCLUSIVE


def test_a_passing_gate_moves_to_phase_two() -> None:
    decision = decide(POLICY, observe({"old": 5, "new": 1}, GOOD), started(), at(61))
    state = decision.state
    assert state is not None
    assert (state.phase, state.stage, state.step, state.canary_agents) == (
        RolloutPhase.PROMOTING,
        Stage.GRADUAL,
        1,
        2,
    )
    assert reasons(decision) == [RolloutReason.GATE_PASSED, RolloutReason.STEP_STARTED]
    assert decision.desired == {"old": 5, "new": 2}
    assert state.baseline["new"].completed == 50, "the next gate judges only new tasks"
    assert state.history[-2].verdict is not None
    assert state.history[-2].verdict.measured.tasks == 50


def test_a_failing_gate_rolls_back_with_the_measured_error_rate() -> None:
    decision = decide(POLICY, observe({"old": 5, "new": 1}, BAD), started(), at(61))
    state = decision.state
    assert state is not None
    assert state.phase is RolloutPhase.ROLLED_BACK
    assert decision.desired == {"old": 6}
    assert reasons(decision) == [RolloutReason.ROLLED_BACK]
    assert "success rate 60.0% < 95.0%" in state.message
    assert state.last_verdict is not None
    assert state.last_verdict.measured.error_rate == 0.4
    assert state.last_verdict.measured.success_rate == 0.6


def test_failure_limit_judges_again_before_rolling_back() -> None:
    policy = POLICY.model_copy(
        update={
            "initial": InitialStage(soak_seconds=60, gate=GateSpec(min_tasks=10, failure_limit=2))
        }
    )
    first = decide(policy, observe({"old": 5, "new": 1}, BAD), started(), at(61))
    assert first.state is not None
    assert (first.state.phase, first.state.consecutive_failures) == (RolloutPhase.ANALYZING, 1)
    assert reasons(first) == [RolloutReason.GATE_FAILED]
    worse = {"new": RevisionStats(50, 50), "old": BAD["old"]}
    second = decide(policy, observe({"old": 5, "new": 1}, worse), first.state, at(122))
    assert second.state is not None
    assert second.state.phase is RolloutPhase.ROLLED_BACK


def test_without_auto_rollback_a_failed_gate_holds_degraded() -> None:
    policy = POLICY.model_copy(update={"auto_rollback": False})
    decision = decide(policy, observe({"old": 5, "new": 1}, BAD), started(), at(61))
    assert decision.state is not None
    assert decision.state.phase is RolloutPhase.DEGRADED
    assert decision.desired == {"old": 5, "new": 1}


def test_phase_two_moves_one_agent_per_step_then_phase_three_moves_the_rest() -> None:
    state = in_stage(Stage.GRADUAL, 2, 1)
    for expected in (3, 4, 5):
        decision = decide(
            POLICY,
            observe({"old": 6 - state.canary_agents, "new": state.canary_agents}, GOOD),
            state,
            at(1000 * expected),
        )
        assert decision.state is not None
        state = decision.state.model_copy(update={"baseline": {}})
        assert (state.stage, state.canary_agents) == (Stage.GRADUAL, expected)
    decision = decide(POLICY, observe({"old": 1, "new": 5}, GOOD), state, at(9000))
    assert decision.state is not None
    assert (decision.state.stage, decision.state.canary_agents) == (Stage.FULL, 6)


def test_phase_three_completes_and_decommissions_the_legacy_revision() -> None:
    full = in_stage(Stage.FULL, 6, 5)
    decision = decide(POLICY, observe({"new": 6}), full, at(100))
    assert decision.state is not None
    assert (decision.state.phase, decision.state.stable_revision) == (RolloutPhase.COMPLETED, "new")
    assert decision.desired == {"new": 6}
    assert reasons(decision) == [RolloutReason.COMPLETED]
    again = decide(POLICY, observe({"new": 6}, current_revision="new"), decision.state, at(200))
    assert (again.desired, again.happened) == ({"new": 6}, ())


def test_pause_holds_and_resume_does_not_count_the_pause_as_soak() -> None:
    paused_policy = POLICY.model_copy(update={"paused": True})
    paused = decide(paused_policy, observe({"old": 5, "new": 1}, GOOD), started(), at(30))
    assert paused.state is not None
    assert (paused.state.phase, paused.desired) == (RolloutPhase.PAUSED, {"old": 5, "new": 1})
    assert reasons(paused) == [RolloutReason.PAUSED]
    resumed = decide(POLICY, observe({"old": 5, "new": 1}, GOOD), paused.state, at(600))
    assert resumed.state is not None
    assert reasons(resumed) == [RolloutReason.RESUMED]
    assert resumed.state.phase is RolloutPhase.ANALYZING, "30 s soaked before the pause, not 600"


def test_abort_returns_to_stable_and_stays_until_retry() -> None:
    aborted = decide(
        POLICY, observe({"old": 5, "new": 1}, controls=Controls(abort=True)), started(), at(30)
    )
    assert aborted.state is not None
    assert (aborted.state.phase, aborted.desired) == (RolloutPhase.ABORTED, {"old": 6})
    stays = decide(POLICY, observe({"old": 6}), aborted.state, at(60))
    assert (stays.desired, stays.happened) == ({"old": 6}, ())
    retried = decide(
        POLICY, observe({"old": 6}, controls=Controls(retry=True)), aborted.state, at(90)
    )
    assert retried.state is not None
    assert (retried.state.phase, retried.state.stage) == (RolloutPhase.PROGRESSING, Stage.INITIAL)
    assert reasons(retried) == [RolloutReason.RETRIED]


@pytest.mark.parametrize(
    ("controls", "stage", "canary"),
    [(Controls(promote=True), Stage.GRADUAL, 2), (Controls(promote_full=True), Stage.FULL, 6)],
    ids=["promote", "promote-full"],
)
def test_promote_skips_the_gate(controls: Controls, stage: Stage, canary: int) -> None:
    decision = decide(
        POLICY, observe({"old": 5, "new": 1}, BAD, controls=controls), started(), at(5)
    )
    assert decision.state is not None
    assert (decision.state.stage, decision.state.canary_agents) == (stage, canary)


def test_a_newer_revision_mid_rollout_restarts_from_phase_one() -> None:
    state = in_stage(Stage.GRADUAL, 3, 2)
    decision = decide(
        POLICY, observe({"old": 3, "new": 3}, update_revision="newer"), state, at(100)
    )
    assert decision.state is not None
    assert (
        decision.state.canary_revision,
        decision.state.stage,
        decision.state.stable_revision,
    ) == ("newer", Stage.INITIAL, "old")
    assert decision.desired == {"old": 6, "newer": 1}
    assert reasons(decision) == [RolloutReason.RESTARTED]


def test_reverting_the_spec_to_stable_ends_the_rollout_at_once() -> None:
    decision = decide(
        POLICY,
        observe({"old": 4, "new": 2}, update_revision="old"),
        in_stage(Stage.GRADUAL, 2, 1),
        at(100),
    )
    assert decision.state is not None
    assert (decision.state.phase, decision.desired) == (RolloutPhase.ROLLED_BACK, {"old": 6})
    assert reasons(decision) == [RolloutReason.REVERTED]


def test_canary_that_never_becomes_ready_rolls_back_after_the_deadline() -> None:
    decision = decide(POLICY, observe({"old": 6, "new": 0}), started(), at(301))
    assert decision.state is not None
    assert (decision.state.phase, reasons(decision)) == (
        RolloutPhase.ROLLED_BACK,
        [RolloutReason.DEADLINE_EXCEEDED],
    )


def test_no_traffic_past_the_deadline_is_degraded_not_rolled_back() -> None:
    decision = decide(POLICY, observe({"old": 5, "new": 1}), started(), at(301))
    assert decision.state is not None
    assert decision.state.phase is RolloutPhase.DEGRADED
    assert decision.desired == {"old": 5, "new": 1}, (
        "no evidence against the canary: hold for a human"
    )


def test_the_state_survives_a_restart_through_json() -> None:
    decision = decide(POLICY, observe({"old": 5, "new": 1}, GOOD), started(), at(61))
    assert decision.state is not None
    reloaded = RolloutState.model_validate_json(decision.state.model_dump_json(by_alias=True))
    assert reloaded == decision.state
    obs = observe({"old": 5, "new": 2}, GOOD)
    assert decide(POLICY, obs, reloaded, at(70)) == decide(POLICY, obs, decision.state, at(70))


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


def test_rollout_start_time_is_the_latest_start() -> None:
    first = started()
    assert rollout_started_at(first) == T0
    restarted = decide(
        POLICY, observe({"old": 5, "new": 1}, update_revision="newer"), first, at(50)
    )
    assert rollout_started_at(restarted.state) == at(50)
    assert rollout_started_at(None) is None
