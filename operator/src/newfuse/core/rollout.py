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
from collections.abc import Mapping
from dataclasses import dataclass, field

from newfuse.api.rollout import (
    TERMINAL_PHASES,
    GateResult,
    GateVerdict,
    HistoryEntry,
    PhasedPolicy,
    RevisionCounts,
    RolloutPhase,
    RolloutReason,
    RolloutState,
    Stage,
)
from newfuse.core.actions import Controls
from newfuse.core.allocation import allocate, initial_canary
from newfuse.core.gates import RevisionStats, evaluate_gate
from newfuse.core.golden import GoldenObservation, with_golden
from newfuse.core.shadow import ShadowObservation, with_shadow

MAX_HISTORY = 100


@dataclass(frozen=True)
class Observation:
    """What the controller saw this round."""

    replicas: int
    update_revision: str
    current_revision: str | None
    ready: Mapping[str, int] = field(default_factory=dict)
    capabilities: Mapping[str, frozenset[str]] = field(default_factory=dict)
    stats: Mapping[str, RevisionStats] = field(default_factory=dict)
    controls: Controls = field(default_factory=Controls)
    golden: GoldenObservation | None = None
    shadow: ShadowObservation | None = None


@dataclass(frozen=True)
class Decision:
    """The next state, the agents each revision should have, and what happened (for Events)."""

    state: RolloutState | None
    desired: dict[str, int]
    happened: tuple[HistoryEntry, ...] = ()


def _entry(
    state: RolloutState,
    now: dt.datetime,
    reason: RolloutReason,
    message: str,
    verdict: GateVerdict | None = None,
) -> HistoryEntry:
    return HistoryEntry(
        at=now,
        stage=state.stage,
        step=state.step,
        canary_agents=state.canary_agents,
        reason=reason,
        message=message,
        verdict=verdict,
    )


def _snapshot(stats: Mapping[str, RevisionStats]) -> dict[str, RevisionCounts]:
    return {
        rev: RevisionCounts(
            completed=s.completed,
            failed=s.failed,
            rejected=s.rejected,
            tokens=s.tokens,
            cost=s.cost,
        )
        for rev, s in stats.items()
    }


class _Round:
    """One decision round: accumulates the new state and what happened."""

    def __init__(self, policy: PhasedPolicy, obs: Observation, now: dt.datetime) -> None:
        self.policy, self.obs, self.now = policy, obs, now
        self.happened: list[HistoryEntry] = []

    def record(
        self,
        state: RolloutState,
        reason: RolloutReason,
        message: str,
        verdict: GateVerdict | None = None,
    ) -> RolloutState:
        entry = _entry(state, self.now, reason, message, verdict)
        self.happened.append(entry)
        history = [*state.history, entry][-MAX_HISTORY:]
        return state.model_copy(update={"history": history, "message": message})

    def steady(self, state: RolloutState | None, revision: str) -> Decision:
        return Decision(state, {revision: self.obs.replicas}, tuple(self.happened))

    def start(self, stable: str, reason: RolloutReason, previous: RolloutState | None) -> Decision:
        canary = self.obs.update_revision
        state = RolloutState(
            phase=RolloutPhase.PROGRESSING,
            stable_revision=stable,
            canary_revision=canary,
            canary_agents=initial_canary(self.policy, self.obs.replicas),
            step_started_at=self.now,
            baseline=_snapshot(self.obs.stats),
            history=list(previous.history) if previous is not None else [],
        )
        state = self.record(
            state, reason, f"moving {state.canary_agents} agent(s) to {canary} (stage 1)"
        )
        return self.moving(state)

    def moving(self, state: RolloutState) -> Decision:
        """Desired agents per revision for the state's current step."""
        obs = self.obs
        stable, canary = state.stable_revision, state.canary_revision
        keep, run = allocate(
            self.policy,
            obs.replicas,
            state.canary_agents,
            obs.ready.get(canary, 0),
            obs.capabilities.get(stable, frozenset()),
            obs.capabilities.get(canary, frozenset()),
        )
        desired = {canary: run} if stable == canary else {stable: keep, canary: run}
        return Decision(state, desired, tuple(self.happened))

    def end(
        self,
        state: RolloutState,
        phase: RolloutPhase,
        reason: RolloutReason,
        message: str,
        verdict: GateVerdict | None = None,
    ) -> Decision:
        state = self.record(state.model_copy(update={"phase": phase}), reason, message, verdict)
        return self.steady(state, state.stable_revision)

    def advance(
        self, state: RolloutState, reason: RolloutReason, *, full: bool = False
    ) -> Decision:
        """The next step: `gradual.step` more agents (stage 2), or all of them (stage 3)."""
        replicas = self.obs.replicas
        if full:
            stage, target, step = Stage.FULL, replicas, state.step + 1
        else:
            target = min(replicas, state.canary_agents + self.policy.gradual.step)
            # Stage 2 counts its steps from 1; a step that reaches every agent is stage 3.
            step = 1 if state.stage is Stage.INITIAL else state.step + 1
            stage = Stage.FULL if target >= replicas else Stage.GRADUAL
        state = state.model_copy(
            update={
                "phase": RolloutPhase.PROMOTING,
                "stage": stage,
                "step": step,
                "canary_agents": target,
                "step_started_at": self.now,
                "baseline": _snapshot(self.obs.stats),
                "consecutive_failures": 0,
            }
        )
        state = self.record(
            state,
            reason,
            f"step {step} of {stage}: {target}/{replicas} agents on {state.canary_revision}",
        )
        return self.moving(state)


def decide(
    policy: PhasedPolicy, obs: Observation, state: RolloutState | None, now: dt.datetime
) -> Decision:
    """The next rollout state and the agents each revision should have.

    Each transition is a named function below, tried in this order; the first that applies
    decides. tests/unit/test_rollout_transitions.py holds the table of them.
    """
    rnd = _Round(policy, obs, now)
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
    if obs.controls.promote_full:
        return rnd.advance(state, RolloutReason.PROMOTED_FULL, full=True)
    if obs.ready.get(state.canary_revision, 0) < state.canary_agents:
        return _canaries_not_ready(rnd, state)
    if obs.controls.promote:
        if state.stage is Stage.FULL:
            return _complete(rnd, state)
        return rnd.advance(state, RolloutReason.PROMOTED)
    return _judge(rnd, state)


def _idle(rnd: _Round, state: RolloutState | None) -> Decision:
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


def _spec_changed(rnd: _Round, state: RolloutState) -> Decision:
    """The spec moved during a rollout: back to stable ends it, anything else restarts it."""
    update = rnd.obs.update_revision
    if update == state.stable_revision:
        message = f"spec reverted to stable {update}"
        return rnd.end(state, RolloutPhase.ROLLED_BACK, RolloutReason.REVERTED, message)
    return rnd.start(state.stable_revision, RolloutReason.RESTARTED, state)


def _pause(rnd: _Round, state: RolloutState) -> Decision:
    """spec.rollout.paused: hold the agents where they are; the soak clock stops."""
    if state.phase is not RolloutPhase.PAUSED:
        state = state.model_copy(update={"phase": RolloutPhase.PAUSED, "paused_at": rnd.now})
        state = rnd.record(state, RolloutReason.PAUSED, "paused")
    return rnd.moving(state)


def _resume(rnd: _Round, state: RolloutState) -> RolloutState:
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


def _canaries_not_ready(rnd: _Round, state: RolloutState) -> Decision:
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


def _judge(rnd: _Round, state: RolloutState) -> Decision:
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
        state = rnd.record(state, RolloutReason.GATE_PASSED, verdict.reason, verdict)
        return rnd.advance(state, RolloutReason.STEP_STARTED)
    if verdict.result is GateResult.INCONCLUSIVE:
        return _inconclusive(rnd, state, verdict, elapsed)
    return _gate_failed(rnd, state, verdict, gate.failure_limit)


def _inconclusive(
    rnd: _Round, state: RolloutState, verdict: GateVerdict, elapsed: float
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
    rnd: _Round, state: RolloutState, verdict: GateVerdict, failure_limit: int
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
            "baseline": _snapshot(rnd.obs.stats),
            "phase": RolloutPhase.ANALYZING,
        }
    )
    message = f"{verdict.reason} ({failures}/{failure_limit})"
    return rnd.moving(rnd.record(state, RolloutReason.GATE_FAILED, message, verdict))


def _complete(rnd: _Round, state: RolloutState) -> Decision:
    state = state.model_copy(
        update={"phase": RolloutPhase.COMPLETED, "stable_revision": state.canary_revision}
    )
    state = rnd.record(
        state,
        RolloutReason.COMPLETED,
        f"every agent on {state.canary_revision}; legacy decommissioned",
    )
    return rnd.steady(state, state.canary_revision)
