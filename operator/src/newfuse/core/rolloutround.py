"""One round of the rollout state machine: what it saw, and the moves a transition is made of.

newfuse.core.rollout's transitions build their Decision through a `Round`: recording history,
starting, moving, ending and advancing a step. Apart so each file reads at once.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass, field

from newfuse.api.rollout import (
    GateVerdict,
    HistoryEntry,
    PhasedPolicy,
    RevisionCounts,
    RolloutPhase,
    RolloutReason,
    RolloutState,
    Stage,
)
from newfuse.core import protocol
from newfuse.core.actions import Controls
from newfuse.core.allocation import allocate, initial_canary
from newfuse.core.gates import RevisionStats
from newfuse.core.golden import GoldenObservation
from newfuse.core.protocol import ProtocolObservation
from newfuse.core.shadow import ShadowObservation

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
    protocol: ProtocolObservation | None = None


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


def snapshot(stats: Mapping[str, RevisionStats]) -> dict[str, RevisionCounts]:
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


class Round:
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
            baseline=snapshot(self.obs.stats),
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
        # Until stage 3, one stable agent stays for a protocol major only it speaks.
        floor = 0 if state.stage is Stage.FULL or self.protocol_hold(state) is None else 1
        keep, run = allocate(
            self.policy,
            obs.replicas,
            state.canary_agents,
            obs.ready.get(canary, 0),
            obs.capabilities.get(stable, frozenset()),
            obs.capabilities.get(canary, frozenset()),
            stable_floor=floor,
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

    def held(self, state: RolloutState) -> str | None:
        """Why the next step may not start: it is stage 3, and the protocol gate holds it."""
        if state.canary_agents + self.policy.gradual.step < self.obs.replicas:
            return None
        return self.protocol_hold(state)

    def protocol_hold(self, state: RolloutState) -> str | None:
        """Why the canary may not be left alone (newfuse.core.protocol); None: it may."""
        spec = self.policy.analysis.protocol
        return protocol.hold(spec, self.obs.protocol, state.canary_revision)

    def hold(self, state: RolloutState, why: str) -> Decision:
        """Stay on this step, still judged each round, until the protocol gate lets go."""
        if state.held != why:
            state = self.record(state, RolloutReason.PROTOCOL_HELD, why)
        state = state.model_copy(update={"held": why, "phase": RolloutPhase.ANALYZING})
        return self.moving(state)

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
                "baseline": snapshot(self.obs.stats),
                "consecutive_failures": 0,
                "held": None,
            }
        )
        state = self.record(
            state,
            reason,
            f"step {step} of {stage}: {target}/{replicas} agents on {state.canary_revision}",
        )
        return self.moving(state)
