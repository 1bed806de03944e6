"""The phased rollout as a pure state machine: (policy, state, observation, now) -> decision.

No I/O and no clock: everything the next step depends on is passed in, and everything a later
step needs is in RolloutState, which lives in the resource's status. An operator restarted at any
point re-derives the same decision from the same state, so a rollout resumes exactly where it
stopped.

How agents move: the decision says how many agents each revision should have, as
newfuse.core.allocation works it out. What the canary's numbers must be to pass a step is
newfuse.core.gates'; turning a fleet into an Observation and a Decision back into pods is
newfuse.core.rolloutstep's.
"""

from __future__ import annotations

import datetime as dt

from newfuse.api.rollout import (
    TERMINAL_PHASES,
    GateResult,
    GateVerdict,
    PhasedPolicy,
    RolloutPhase,
    RolloutReason,
    RolloutState,
    Stage,
)
from newfuse.core.gates import RevisionStats, evaluate_gate
from newfuse.core.golden import with_golden
from newfuse.core.rolloutround import Decision, Observation, Round, snapshot
from newfuse.core.shadow import with_shadow

__all__ = ["Decision", "Observation", "decide"]


def decide(
    policy: PhasedPolicy, obs: Observation, state: RolloutState | None, now: dt.datetime
) -> Decision:
    """The next rollout state and the agents each revision should have.

    Each transition is a named function below, tried in this order; the first that applies
    decides. tests/unit/test_rollout_transitions.py holds the table of them.
    """
    rnd = Round(policy, obs, now)
    if state is None or state.phase in TERMINAL_PHASES:
        return _idle(rnd, state)
    if obs.update_revision != state.canary_revision:
        return _spec_changed(rnd, state)
    if obs.controls.abort:
        message = "aborted: every agent back on stable"
        return rnd.end(state, RolloutPhase.ABORTED, RolloutReason.ABORTED, message)
    if policy.paused:
        return _pause(rnd, state)
    state = _resume(rnd, state)
    if state.held is not None and rnd.held(state) is None:
        state = state.model_copy(update={"held": None})  # released, whatever the gate says now
    if obs.controls.promote_full:
        return rnd.advance(state, RolloutReason.PROMOTED_FULL, full=True)
    if obs.ready.get(state.canary_revision, 0) < state.canary_agents:
        return _canaries_not_ready(rnd, state)
    if obs.controls.promote:
        if state.stage is Stage.FULL:
            return _complete(rnd, state)
        if (held := rnd.held(state)) is not None:
            return rnd.hold(state, held)
        return rnd.advance(state, RolloutReason.PROMOTED)
    return _judge(rnd, state)


def _idle(rnd: Round, state: RolloutState | None) -> Decision:
    """No rollout in flight: stay on stable, or start one towards the update revision."""
    obs, update = rnd.obs, rnd.obs.update_revision
    if state is None:
        stable = obs.current_revision or update
    elif state.phase is RolloutPhase.COMPLETED:
        stable = state.canary_revision
    else:
        stable = state.stable_revision
    if update == stable:
        return rnd.steady(state, stable)
    failed_before = (
        state is not None
        and state.phase is not RolloutPhase.COMPLETED
        and state.canary_revision == update
    )
    if failed_before and not obs.controls.retry:
        return rnd.steady(state, stable)  # stays on stable until retried or changed again
    reason = RolloutReason.RETRIED if failed_before else RolloutReason.STARTED
    return rnd.start(stable, reason, state)


def _spec_changed(rnd: Round, state: RolloutState) -> Decision:
    """The spec moved during a rollout: back to stable ends it, anything else restarts it."""
    update = rnd.obs.update_revision
    if update == state.stable_revision:
        message = f"spec reverted to stable {update}"
        return rnd.end(state, RolloutPhase.ROLLED_BACK, RolloutReason.REVERTED, message)
    return rnd.start(state.stable_revision, RolloutReason.RESTARTED, state)


def _pause(rnd: Round, state: RolloutState) -> Decision:
    """spec.rollout.paused: hold the agents where they are; the soak clock stops."""
    if state.phase is not RolloutPhase.PAUSED:
        state = state.model_copy(update={"phase": RolloutPhase.PAUSED, "paused_at": rnd.now})
        state = rnd.record(state, RolloutReason.PAUSED, "paused")
    return rnd.moving(state)


def _resume(rnd: Round, state: RolloutState) -> RolloutState:
    """Unpaused: the step's soak resumes where it stopped (the pause does not count)."""
    if state.phase is not RolloutPhase.PAUSED:
        return state
    paused_for = rnd.now - (state.paused_at or rnd.now)
    state = state.model_copy(
        update={
            "phase": RolloutPhase.PROGRESSING,
            "paused_at": None,
            "step_started_at": state.step_started_at + paused_for,
        }
    )
    return rnd.record(state, RolloutReason.RESUMED, "resumed")


def _canaries_not_ready(rnd: Round, state: RolloutState) -> Decision:
    """The step's canary agents are not all Ready: wait, up to the progress deadline."""
    policy = rnd.policy
    elapsed = (rnd.now - state.step_started_at).total_seconds()
    if elapsed <= policy.progress_deadline_seconds:
        if state.phase is not RolloutPhase.DEGRADED:
            state = state.model_copy(update={"phase": RolloutPhase.PROGRESSING})
        return rnd.moving(state)
    ready = rnd.obs.ready.get(state.canary_revision, 0)
    message = f"only {ready}/{state.canary_agents} canary agents Ready after {elapsed:.0f}s"
    if policy.auto_rollback:
        return rnd.end(state, RolloutPhase.ROLLED_BACK, RolloutReason.DEADLINE_EXCEEDED, message)
    if state.phase is not RolloutPhase.DEGRADED:
        state = rnd.record(
            state.model_copy(update={"phase": RolloutPhase.DEGRADED}),
            RolloutReason.DEADLINE_EXCEEDED,
            message,
        )
    return rnd.moving(state)


def _judge(rnd: Round, state: RolloutState) -> Decision:
    """Every canary agent is Ready: soak, then let the stage's gate judge the step."""
    policy, obs = rnd.policy, rnd.obs
    elapsed = (rnd.now - state.step_started_at).total_seconds()
    if state.stage is Stage.FULL:
        if elapsed >= policy.full.soak_seconds:
            return _complete(rnd, state)
        return rnd.moving(state.model_copy(update={"phase": RolloutPhase.ANALYZING}))
    initial = state.stage is Stage.INITIAL
    soak = policy.initial.soak_seconds if initial else policy.gradual.interval_seconds
    if elapsed < soak:
        return rnd.moving(state.model_copy(update={"phase": RolloutPhase.ANALYZING}))
    canary_stats = obs.stats.get(state.canary_revision, RevisionStats()).since(
        state.baseline.get(state.canary_revision)
    )
    stable_stats = obs.stats.get(state.stable_revision)
    stable_since = (
        stable_stats.since(state.baseline.get(state.stable_revision)) if stable_stats else None
    )
    gate = (policy.initial if initial else policy.gradual).gate
    verdict = evaluate_gate(gate, canary_stats, stable_since, rnd.now)
    if (golden := policy.analysis.golden_tasks) is not None:
        verdict = with_golden(verdict, golden, obs.golden, state)
    if (shadow := policy.analysis.shadow) is not None:
        verdict = with_shadow(verdict, shadow, obs.shadow, state)
    state = state.model_copy(update={"last_verdict": verdict})
    if verdict.result is GateResult.PASSED:
        if (held := rnd.held(state)) is not None:
            return rnd.hold(state, held)
        state = rnd.record(state, RolloutReason.GATE_PASSED, verdict.reason, verdict)
        return rnd.advance(state, RolloutReason.STEP_STARTED)
    if verdict.result is GateResult.INCONCLUSIVE:
        return _inconclusive(rnd, state, verdict, elapsed)
    return _gate_failed(rnd, state, verdict, gate.failure_limit)


def _inconclusive(
    rnd: Round, state: RolloutState, verdict: GateVerdict, elapsed: float
) -> Decision:
    """Too few tasks to judge: keep analyzing, Degraded once past the progress deadline."""
    degraded = state.phase is RolloutPhase.DEGRADED
    if elapsed > rnd.policy.progress_deadline_seconds and not degraded:
        state = rnd.record(
            state.model_copy(update={"phase": RolloutPhase.DEGRADED}),
            RolloutReason.DEADLINE_EXCEEDED,
            f"no verdict after {elapsed:.0f}s: {verdict.reason}",
            verdict,
        )
        return rnd.moving(state)
    phase = RolloutPhase.DEGRADED if degraded else RolloutPhase.ANALYZING
    return rnd.moving(state.model_copy(update={"phase": phase}))


def _gate_failed(
    rnd: Round, state: RolloutState, verdict: GateVerdict, failure_limit: int
) -> Decision:
    """A failed gate: judge again on fresh numbers, until the failure limit ends the step."""
    failures = state.consecutive_failures + 1
    state = state.model_copy(update={"consecutive_failures": failures})
    if failures >= failure_limit:
        message = f"gate failed at {state.stage} step {state.step}: {verdict.reason}"
        if rnd.policy.auto_rollback:
            return rnd.end(
                state, RolloutPhase.ROLLED_BACK, RolloutReason.ROLLED_BACK, message, verdict
            )
        state = rnd.record(
            state.model_copy(update={"phase": RolloutPhase.DEGRADED}),
            RolloutReason.GATE_FAILED,
            message,
            verdict,
        )
        return rnd.moving(state)
    state = state.model_copy(
        update={
            "step_started_at": rnd.now,
            "baseline": snapshot(rnd.obs.stats),
            "phase": RolloutPhase.ANALYZING,
        }
    )
    message = f"{verdict.reason} ({failures}/{failure_limit})"
    return rnd.moving(rnd.record(state, RolloutReason.GATE_FAILED, message, verdict))


def _complete(rnd: Round, state: RolloutState) -> Decision:
    state = state.model_copy(
        update={"phase": RolloutPhase.COMPLETED, "stable_revision": state.canary_revision}
    )
    state = rnd.record(
        state,
        RolloutReason.COMPLETED,
        f"every agent on {state.canary_revision}; legacy decommissioned",
    )
    return rnd.steady(state, state.canary_revision)
