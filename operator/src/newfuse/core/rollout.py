"""The phased rollout as a pure state machine: (policy, state, observation, now) -> decision.

No I/O and no clock: everything the next step depends on is passed in, and everything a later
step needs is in RolloutState, which lives in the resource's status. An operator restarted at any
point re-derives the same decision from the same state, so a rollout resumes exactly where it
stopped.

How agents move: the decision says how many agents each revision should have. `allocate` turns
the step's canary target into pod counts that respect maxSurge (extra pods while moving),
maxUnavailable (Ready agents below replicas) and the capability budget (Ready agents per
capability never below the budget): stable agents are only let go as canary agents become Ready.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from newfuse.api.rollout import (
    TERMINAL_PHASES,
    GateResult,
    GateSpec,
    GateVerdict,
    HistoryEntry,
    Measured,
    PhasedPolicy,
    RevisionCounts,
    RolloutAction,
    RolloutPhase,
    RolloutReason,
    RolloutState,
    Stage,
)

MAX_HISTORY = 100
# History entries that end a rollout (their time minus the start is the rollout's duration).
ENDING_ROLLOUT_REASONS = frozenset(
    {
        RolloutReason.COMPLETED,
        RolloutReason.ROLLED_BACK,
        RolloutReason.ABORTED,
        RolloutReason.REVERTED,
        RolloutReason.DEADLINE_EXCEEDED,
    }
)
# History entries that are posted as Warning Events (the rest are Normal).
WARNING_ROLLOUT_REASONS = frozenset(
    {
        RolloutReason.GATE_FAILED,
        RolloutReason.ROLLED_BACK,
        RolloutReason.DEADLINE_EXCEEDED,
        RolloutReason.ABORTED,
        RolloutReason.REVERTED,
    }
)


@dataclass(frozen=True)
class RevisionStats:
    """Finished tasks of one revision (cumulative) and its agents' worst p95 latency.

    Tasks it refused (dead-lettered without running: a bad or unknown signature, say) count as
    failures, so a canary that cannot take the fleet's work fails its gate instead of idling.
    """

    completed: int = 0
    failed: int = 0
    p95_latency_ms: float | None = None
    rejected: int = 0

    def since(self, baseline: RevisionCounts | None) -> RevisionStats:
        """The tasks finished after ``baseline`` was taken."""
        if baseline is None:
            return self
        return RevisionStats(
            max(0, self.completed - baseline.completed),
            max(0, self.failed - baseline.failed),
            self.p95_latency_ms,
            max(0, self.rejected - baseline.rejected),
        )

    @property
    def tasks(self) -> int:
        """Finished or refused tasks."""
        return self.completed + self.failed + self.rejected

    @property
    def error_rate(self) -> float | None:
        """(Failed + refused) / tasks, or None with no tasks."""
        return (self.failed + self.rejected) / self.tasks if self.tasks else None


@dataclass(frozen=True)
class Controls:
    """One-shot user requests (from annotations set by `newfuse rollout ...`)."""

    promote: bool = False
    promote_full: bool = False
    abort: bool = False
    retry: bool = False


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


@dataclass(frozen=True)
class Decision:
    """The next state, the agents each revision should have, and what happened (for Events)."""

    state: RolloutState | None
    desired: dict[str, int]
    happened: tuple[HistoryEntry, ...] = ()


def evaluate_gate(
    gate: GateSpec, canary: RevisionStats, stable: RevisionStats | None, now: dt.datetime
) -> GateVerdict:
    """Judge the canary's metrics (since its step began) against the gate and the stable ones."""
    stable_error = stable.error_rate if stable is not None else None
    measured = Measured(
        tasks=canary.tasks,
        success_rate=None if canary.error_rate is None else round(1 - canary.error_rate, 4),
        error_rate=None if canary.error_rate is None else round(canary.error_rate, 4),
        p95_latency_ms=canary.p95_latency_ms,
        stable_error_rate=None if stable_error is None else round(stable_error, 4),
        canary_share=_share(canary, stable),
    )

    def verdict(result: GateResult, reason: str) -> GateVerdict:
        if canary.rejected and result is GateResult.FAILED:
            reason += f" ({canary.rejected} of {canary.tasks} refused unrun: see the DLQ)"
        return GateVerdict(result=result, reason=reason, measured=measured, at=now)

    if canary.tasks < max(gate.min_tasks, 1) and gate.min_tasks > 0:
        return verdict(
            GateResult.INCONCLUSIVE, f"{canary.tasks}/{gate.min_tasks} canary tasks finished"
        )
    error = canary.error_rate or 0.0
    if gate.min_success_rate is not None and 1 - error < gate.min_success_rate:
        return verdict(
            GateResult.FAILED, f"success rate {1 - error:.1%} < {gate.min_success_rate:.1%}"
        )
    if gate.max_error_rate is not None and error > gate.max_error_rate:
        return verdict(GateResult.FAILED, f"error rate {error:.1%} > {gate.max_error_rate:.1%}")
    margin = gate.max_error_rate_increase
    if margin is not None and stable_error is not None and error > stable_error + margin:
        return verdict(
            GateResult.FAILED, f"error rate {error:.1%} > stable {stable_error:.1%} + {margin:.1%}"
        )
    if (
        gate.max_p95_latency_ms is not None
        and (canary.p95_latency_ms or 0) > gate.max_p95_latency_ms
    ):
        return verdict(
            GateResult.FAILED,
            f"p95 latency {canary.p95_latency_ms:.0f} ms > {gate.max_p95_latency_ms:.0f} ms",
        )
    return verdict(GateResult.PASSED, f"{canary.tasks} tasks, error rate {error:.1%}")


def _share(canary: RevisionStats, stable: RevisionStats | None) -> float | None:
    # Canary agents read from the same consumer group, so their share of the work follows their
    # share of the agents; reporting it shows the gate judged real traffic.
    total = canary.tasks + (stable.tasks if stable is not None else 0)
    return round(canary.tasks / total, 4) if total else None


def initial_canary(policy: PhasedPolicy, replicas: int) -> int:
    """Agents phase 1 moves: `count`, or `percent` of replicas rounded up; at least 1."""
    initial = policy.initial
    wanted = initial.count if initial.count is not None else 1
    if initial.percent is not None:
        wanted = math.ceil(replicas * initial.percent / 100)
    return max(1, min(replicas, wanted))


def allocate(
    policy: PhasedPolicy,
    replicas: int,
    canary_target: int,
    ready_canary: int,
    stable_capabilities: frozenset[str],
    canary_capabilities: frozenset[str],
) -> tuple[int, int]:
    """(stable agents to keep, canary agents to run) for the step's canary target.

    Stable agents go only as canary agents are Ready (minus maxUnavailable), never taking a
    capability below the budget; canary agents are added at most maxSurge above replicas.
    """
    stable_keep = max(replicas - canary_target, replicas - ready_canary - policy.max_unavailable, 0)
    budget = min(policy.capability_budget, replicas)
    for capability in stable_capabilities:
        from_canary = ready_canary if capability in canary_capabilities else 0
        stable_keep = max(stable_keep, budget - from_canary)
    stable_keep = min(stable_keep, replicas)
    canary_run = max(
        min(canary_target, replicas + policy.max_surge - stable_keep),
        min(ready_canary, canary_target),
    )
    return stable_keep, max(canary_run, 0)


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
        rev: RevisionCounts(completed=s.completed, failed=s.failed, rejected=s.rejected)
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
            state, reason, f"moving {state.canary_agents} agent(s) to {canary} (phase 1)"
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

    def advance(self, state: RolloutState, reason: RolloutReason, full: bool = False) -> Decision:
        replicas = self.obs.replicas
        gradual = self.policy.gradual
        if full or (
            state.stage is Stage.GRADUAL and state.canary_agents + gradual.step >= replicas
        ):
            stage, target, step = Stage.FULL, replicas, state.step + 1
        elif state.stage is Stage.INITIAL:
            stage, target, step = (
                Stage.GRADUAL,
                min(replicas, state.canary_agents + gradual.step),
                1,
            )
        else:
            stage, target, step = (
                state.stage,
                min(replicas, state.canary_agents + gradual.step),
                state.step + 1,
            )
        if stage is Stage.GRADUAL and target >= replicas:
            stage = Stage.FULL
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
    """The next rollout state and the agents each revision should have."""
    rnd = _Round(policy, obs, now)
    controls = obs.controls
    update = obs.update_revision

    if state is None or state.phase in TERMINAL_PHASES:
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
        if failed_before and not controls.retry:
            return rnd.steady(state, stable)  # stays on stable until retried or changed again
        reason = RolloutReason.RETRIED if failed_before else RolloutReason.STARTED
        return rnd.start(stable, reason, state)

    if update != state.canary_revision:
        if update == state.stable_revision:
            return rnd.end(
                state,
                RolloutPhase.ROLLED_BACK,
                RolloutReason.REVERTED,
                f"spec reverted to stable {update}",
            )
        return rnd.start(state.stable_revision, RolloutReason.RESTARTED, state)

    if controls.abort:
        return rnd.end(
            state,
            RolloutPhase.ABORTED,
            RolloutReason.ABORTED,
            "aborted: every agent back on stable",
        )

    if policy.paused:
        if state.phase is not RolloutPhase.PAUSED:
            state = state.model_copy(update={"phase": RolloutPhase.PAUSED, "paused_at": now})
            state = rnd.record(state, RolloutReason.PAUSED, "paused")
        return rnd.moving(state)
    if state.phase is RolloutPhase.PAUSED:
        paused_for = now - (state.paused_at or now)
        state = state.model_copy(
            update={
                "phase": RolloutPhase.PROGRESSING,
                "paused_at": None,
                "step_started_at": state.step_started_at + paused_for,
            }
        )
        state = rnd.record(state, RolloutReason.RESUMED, "resumed")

    if controls.promote_full:
        return rnd.advance(state, RolloutReason.PROMOTED_FULL, full=True)

    elapsed = (now - state.step_started_at).total_seconds()
    ready = obs.ready.get(state.canary_revision, 0)
    if ready < state.canary_agents:
        if elapsed > policy.progress_deadline_seconds:
            message = f"only {ready}/{state.canary_agents} canary agents Ready after {elapsed:.0f}s"
            if policy.auto_rollback:
                return rnd.end(
                    state, RolloutPhase.ROLLED_BACK, RolloutReason.DEADLINE_EXCEEDED, message
                )
            if state.phase is not RolloutPhase.DEGRADED:
                state = rnd.record(
                    state.model_copy(update={"phase": RolloutPhase.DEGRADED}),
                    RolloutReason.DEADLINE_EXCEEDED,
                    message,
                )
            return rnd.moving(state)
        if state.phase is not RolloutPhase.DEGRADED:
            state = state.model_copy(update={"phase": RolloutPhase.PROGRESSING})
        return rnd.moving(state)

    if controls.promote:
        if state.stage is Stage.FULL:
            return _complete(rnd, state)
        return rnd.advance(state, RolloutReason.PROMOTED)
    if state.stage is Stage.FULL:
        if elapsed >= policy.full.soak_seconds:
            return _complete(rnd, state)
        return rnd.moving(state.model_copy(update={"phase": RolloutPhase.ANALYZING}))

    stage_policy = policy.initial if state.stage is Stage.INITIAL else policy.gradual
    soak = (
        policy.initial.soak_seconds
        if state.stage is Stage.INITIAL
        else policy.gradual.interval_seconds
    )
    if elapsed < soak:
        return rnd.moving(state.model_copy(update={"phase": RolloutPhase.ANALYZING}))
    canary_stats = obs.stats.get(state.canary_revision, RevisionStats()).since(
        state.baseline.get(state.canary_revision)
    )
    stable_stats = obs.stats.get(state.stable_revision)
    stable_since = (
        stable_stats.since(state.baseline.get(state.stable_revision)) if stable_stats else None
    )
    verdict = evaluate_gate(stage_policy.gate, canary_stats, stable_since, now)
    state = state.model_copy(update={"last_verdict": verdict})

    if verdict.result is GateResult.PASSED:
        state = rnd.record(state, RolloutReason.GATE_PASSED, verdict.reason, verdict)
        return rnd.advance(state, RolloutReason.STEP_STARTED)
    if verdict.result is GateResult.INCONCLUSIVE:
        if elapsed > policy.progress_deadline_seconds and state.phase is not RolloutPhase.DEGRADED:
            message = f"no verdict after {elapsed:.0f}s: {verdict.reason}"
            state = rnd.record(
                state.model_copy(update={"phase": RolloutPhase.DEGRADED}),
                RolloutReason.DEADLINE_EXCEEDED,
                message,
                verdict,
            )
            return rnd.moving(state)
        phase = (
            RolloutPhase.DEGRADED
            if state.phase is RolloutPhase.DEGRADED
            else RolloutPhase.ANALYZING
        )
        return rnd.moving(state.model_copy(update={"phase": phase}))

    failures = state.consecutive_failures + 1
    state = state.model_copy(update={"consecutive_failures": failures})
    if failures >= stage_policy.gate.failure_limit:
        message = f"gate failed at {state.stage} step {state.step}: {verdict.reason}"
        if policy.auto_rollback:
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
    # Below the failure limit: judge again on fresh numbers.
    state = state.model_copy(
        update={
            "step_started_at": now,
            "baseline": _snapshot(obs.stats),
            "phase": RolloutPhase.ANALYZING,
        }
    )
    state = rnd.record(
        state,
        RolloutReason.GATE_FAILED,
        f"{verdict.reason} ({failures}/{stage_policy.gate.failure_limit})",
        verdict,
    )
    return rnd.moving(state)


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


def parse_action(value: str | None, already_handled: str | None) -> Controls:
    """Controls from the rollout-action annotation ("promote@2026-11-21T12:00:00Z"), once."""
    if not value or value == already_handled:
        return Controls()
    verb = value.split("@", 1)[0].strip().lower()
    return Controls(
        promote=verb == RolloutAction.PROMOTE,
        promote_full=verb == RolloutAction.PROMOTE_FULL,
        abort=verb == RolloutAction.ABORT,
        retry=verb == RolloutAction.RETRY,
    )


def revision_stats(
    counts: Mapping[str, tuple[int, int, int]], p95_by_revision: Mapping[str, float]
) -> dict[str, RevisionStats]:
    """Per-revision stats from Redis counters (completed, failed, rejected) and agents' p95s."""
    revisions = set(counts) | set(p95_by_revision)
    stats = {}
    for rev in revisions:
        completed, failed, rejected = counts.get(rev, (0, 0, 0))
        stats[rev] = RevisionStats(completed, failed, p95_by_revision.get(rev), rejected)
    return stats


def rollout_started_at(state: RolloutState | None) -> dt.datetime | None:
    """When the rollout in ``state`` began (its last start, restart or retry)."""
    if state is None:
        return None
    starts = {RolloutReason.STARTED, RolloutReason.RESTARTED, RolloutReason.RETRIED}
    return next((h.at for h in reversed(state.history) if h.reason in starts), None)
