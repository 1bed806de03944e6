"""The rollout state machine (decide), told as stories that chain its transitions.

A new revision starts stage 1 with one canary; gates pass or fail (rolling back, or holding
Degraded without auto-rollback); stage 2 moves one agent per step and stage 3 the rest; pause,
resume, abort, retry and promote; a newer revision or a reverted spec mid-rollout; the progress
deadline; and the state surviving a restart through JSON. Gate and allocation arithmetic on its
own is in test_rollout_gates.py; one row per transition in test_rollout_transitions.py.
"""

from __future__ import annotations

import pytest

from newfuse.api.rollout import (
    GateResult,
    GateSpec,
    InitialStage,
    RolloutPhase,
    RolloutReason,
    RolloutState,
    Stage,
)
from newfuse.core.actions import Controls
from newfuse.core.gates import RevisionStats
from newfuse.core.rollout import Decision, Observation, decide
from newfuse.core.rolloutstep import rollout_started_at
from phased_policy import POLICY, T0, at

CAPS = {"old": frozenset({"chat"}), "new": frozenset({"chat"})}


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


def test_rollout_start_time_is_the_latest_start() -> None:
    first = started()
    assert rollout_started_at(first) == T0
    restarted = decide(
        POLICY, observe({"old": 5, "new": 1}, update_revision="newer"), first, at(50)
    )
    assert rollout_started_at(restarted.state) == at(50)
    assert rollout_started_at(None) is None
