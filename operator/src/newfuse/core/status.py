"""The status a fleet should show, derived from its spec, its pods, Redis and agent metrics.

Conditions follow metav1.Condition: `lastTransitionTime` moves only when a condition's status
flips, so `kubectl describe` shows how long a fleet has been Available or Degraded.
"""

from __future__ import annotations

import datetime as dt
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from newfuse.api.budget import BudgetStatus
from newfuse.api.rollout import TERMINAL_PHASES, RolloutPhase, RolloutState
from newfuse.api.status import Endpoints
from newfuse.api.tasks import Backlog
from newfuse.api.v1alpha1 import (
    Condition,
    ConditionStatus,
    ConditionType,
    FleetMetrics,
    NewFuseAgent,
    NewFuseAgentStatus,
    Phase,
    Reason,
)
from newfuse.core import naming
from newfuse.core.planner import Plan
from newfuse.core.pods import ObservedPod, PodHealth
from newfuse.wire.endpoints import a2a_url

TRUE, FALSE, UNKNOWN = ConditionStatus.TRUE, ConditionStatus.FALSE, ConditionStatus.UNKNOWN


@dataclass(frozen=True)
class RedisObservation:
    """What the last Redis round trip of this reconcile showed."""

    reachable: bool
    error: str = ""


@dataclass(frozen=True)
class StatusInputs:
    """Everything status derivation needs, gathered by the reconcile."""

    fleet: NewFuseAgent
    update_revision: str
    pods: Sequence[ObservedPod]
    plan: Plan
    acted_on_generation: bool
    redis: RedisObservation | None
    metrics: FleetMetrics | None
    now: dt.datetime
    # Phased rollouts: the rollout's state, and the revision pods should converge on now (the
    # stable one while a rollout is held back, the update revision otherwise).
    rollout: RolloutState | None = None
    target_revision: str | None = None
    # The task backlog Redis showed (None: not read this time, the last known one stays).
    backlog: Backlog | None = None
    # The fleet API gateway's URL (OperatorConfig.gateway_url), if one serves the fleets.
    gateway_url: str | None = None
    # Today's spend against spec.budget (None: not read this time, the last known one stays).
    budget: BudgetStatus | None = None


def _budget(inputs: StatusInputs, previous: BudgetStatus | None) -> BudgetStatus | None:
    if inputs.fleet.spec.budget is None:
        return None
    return inputs.budget if inputs.budget is not None else previous


def merge_conditions(
    previous: Iterable[Condition], wanted: Iterable[Condition], now: dt.datetime
) -> list[Condition]:
    """Wanted conditions, keeping each one's lastTransitionTime while its status is unchanged."""
    before = {c.type: c for c in previous}
    merged = []
    for cond in wanted:
        old = before.get(cond.type)
        since = old.last_transition_time if old and old.status == cond.status else now
        merged.append(cond.model_copy(update={"last_transition_time": since}))
    return merged


def _condition(
    kind: ConditionType,
    status: ConditionStatus,
    reason: Reason,
    message: str,
    generation: int,
    now: dt.datetime,
) -> Condition:
    return Condition(
        type=kind,
        status=status,
        reason=reason,
        message=message,
        observed_generation=generation,
        last_transition_time=now,
    )


def _sorted_names(pods: Iterable[ObservedPod]) -> str:
    names = sorted(f"{p.name} ({p.detail})" if p.detail else p.name for p in pods)
    return ", ".join(names[:5]) + (f" and {len(names) - 5} more" if len(names) > 5 else "")


def _failing_reason(
    failing: list[ObservedPod], crash_looping: list[ObservedPod]
) -> tuple[Reason, str]:
    """The Degraded reason for failing pods, and what the user can do about it."""
    if any(p.oom_killed for p in crash_looping):
        return Reason.PODS_OOM_KILLED, (
            "; the agent needs more memory than its limit: raise spec.resources.limits.memory"
        )
    if crash_looping:
        first = sorted(p.name for p in crash_looping)[0]
        return Reason.PODS_CRASH_LOOPING, (
            f"; the agent keeps exiting: see `kubectl logs --previous {first}`"
        )
    return Reason.PODS_FAILED, ""


@dataclass(frozen=True)
class _Facts:
    """What every condition and the phase are derived from, counted once."""

    inputs: StatusInputs
    live: list[ObservedPod]
    ready: list[ObservedPod]
    updated: list[ObservedPod]
    failing: list[ObservedPod]
    target: str
    rollout: RolloutState | None
    rollout_active: bool
    rolled_back: bool
    converged: bool

    @classmethod
    def of(cls, inputs: StatusInputs) -> _Facts:
        spec, rollout = inputs.fleet.spec, inputs.rollout
        live = [p for p in inputs.pods if not p.terminating]
        ready = [p for p in live if p.ready]
        target = inputs.target_revision or inputs.update_revision
        active = rollout is not None and rollout.phase not in TERMINAL_PHASES
        converged = (
            inputs.plan.empty
            and not inputs.plan.blocked
            and not active
            and len(live) == spec.replicas
            and sum(1 for p in live if p.revision == target) == spec.replicas
            and len(ready) == spec.replicas
        )
        return cls(
            inputs=inputs,
            live=live,
            ready=ready,
            updated=[p for p in live if p.revision == inputs.update_revision],
            failing=[p for p in live if p.health in (PodHealth.FAILED, PodHealth.CRASH_LOOPING)],
            target=target,
            rollout=rollout,
            rollout_active=active,
            rolled_back=rollout is not None
            and rollout.phase in (RolloutPhase.ROLLED_BACK, RolloutPhase.ABORTED)
            and rollout.stable_revision != inputs.update_revision,
            converged=converged,
        )

    @property
    def replicas(self) -> int:
        return self.inputs.fleet.spec.replicas

    @property
    def counts(self) -> str:
        return f"{len(self.ready)}/{self.replicas} agents ready"

    def rollout_in(self, phase: RolloutPhase) -> bool:
        return self.rollout is not None and self.rollout.phase is phase

    @property
    def rollout_message(self) -> str:
        return self.rollout.message if self.rollout is not None else ""

    @property
    def held_back_reason(self) -> Reason:
        aborted = self.rollout_in(RolloutPhase.ABORTED)
        return Reason.ROLLOUT_ABORTED if aborted else Reason.ROLLED_BACK

    def condition(
        self, kind: ConditionType, status: ConditionStatus, reason: Reason, message: str
    ) -> Condition:
        generation = self.inputs.fleet.metadata.generation
        return _condition(kind, status, reason, message, generation, self.inputs.now)


def _available(f: _Facts) -> Condition:
    status, reason = (
        (TRUE, Reason.MINIMUM_REPLICAS_AVAILABLE)
        if len(f.ready) >= f.replicas
        else (FALSE, Reason.MINIMUM_REPLICAS_UNAVAILABLE)
    )
    return f.condition(ConditionType.AVAILABLE, status, reason, f.counts)


def _progressing(f: _Facts) -> Condition:
    kind = ConditionType.PROGRESSING
    if f.inputs.fleet.spec.paused:
        return f.condition(kind, FALSE, Reason.SPEC_PAUSED, "spec.paused is true")
    if f.rollout is not None and f.rollout_active:
        if f.rollout.held is not None:
            return f.condition(kind, TRUE, Reason.PROTOCOL_VERSIONS_IN_USE, f.rollout.held)
        message = f"{f.rollout.phase}: {f.rollout.message}"
        return f.condition(kind, TRUE, Reason.ROLLOUT_IN_PROGRESS, message)
    if f.rolled_back:
        return f.condition(kind, FALSE, f.held_back_reason, f.rollout_message)
    if f.converged:
        return f.condition(kind, FALSE, Reason.CONVERGED, f"all agents at revision {f.target}")
    update = f.inputs.update_revision
    if any(p.revision != update for p in f.live):
        reason = Reason.NEW_REVISION_ROLLING_OUT
    elif len(f.live) < f.replicas:
        reason = Reason.SCALING_UP
    elif len(f.live) > f.replicas:
        reason = Reason.SCALING_DOWN
    else:
        reason = Reason.WAITING_FOR_READY
    message = f"{len(f.updated)}/{f.replicas} agents at revision {update}, {f.counts}"
    return f.condition(kind, TRUE, reason, message)


def _degraded(f: _Facts) -> Condition:
    kind = ConditionType.DEGRADED
    if f.failing:
        crash_looping = [p for p in f.failing if p.health is PodHealth.CRASH_LOOPING]
        reason, hint = _failing_reason(f.failing, crash_looping)
        return f.condition(kind, TRUE, reason, f"failing pods: {_sorted_names(f.failing)}{hint}")
    if f.rolled_back:
        return f.condition(kind, TRUE, f.held_back_reason, f.rollout_message)
    if f.rollout_in(RolloutPhase.DEGRADED):
        return f.condition(kind, TRUE, Reason.ROLLOUT_DEGRADED, f.rollout_message)
    return f.condition(kind, FALSE, Reason.PODS_HEALTHY, "no failing pods")


def _paused(f: _Facts) -> Condition:
    kind = ConditionType.PAUSED
    if f.inputs.fleet.spec.paused:
        return f.condition(kind, TRUE, Reason.SPEC_PAUSED, "changes to pods are suspended")
    if f.rollout_in(RolloutPhase.PAUSED):
        return f.condition(kind, TRUE, Reason.ROLLOUT_PAUSED, "spec.rollout.paused is true")
    return f.condition(kind, FALSE, Reason.NOT_PAUSED, "")


def _redis_connected(f: _Facts) -> list[Condition]:
    redis, kind = f.inputs.redis, ConditionType.REDIS_CONNECTED
    if redis is None:
        return []
    if redis.reachable:
        return [f.condition(kind, TRUE, Reason.REDIS_REACHABLE, "")]
    return [f.condition(kind, FALSE, Reason.REDIS_UNREACHABLE, redis.error[:1024])]


def _heartbeating(f: _Facts) -> list[Condition]:
    metrics, kind = f.inputs.metrics, ConditionType.AGENTS_HEARTBEATING
    if metrics is None:
        # Keep what was last known rather than flapping to Unknown during a Redis outage.
        return [c for c in f.inputs.fleet.status.conditions if c.type == kind]
    if metrics.stale_agents:
        message = f"{metrics.stale_agents} agent(s) missed their heartbeat"
        return [f.condition(kind, FALSE, Reason.HEARTBEATS_STALE, message)]
    if metrics.reporting_agents:
        message = f"{metrics.reporting_agents} agent(s) reporting"
        return [f.condition(kind, TRUE, Reason.HEARTBEATS_FRESH, message)]
    return [f.condition(kind, UNKNOWN, Reason.NO_AGENTS_REPORTING, "no agent has reported yet")]


def _conditions(f: _Facts) -> list[Condition]:
    wanted = [_available(f), _progressing(f), _degraded(f), _paused(f)]
    return wanted + _redis_connected(f) + _heartbeating(f)


def _phase(f: _Facts) -> Phase:
    spec = f.inputs.fleet.spec
    if f.inputs.fleet.metadata.deletion_timestamp is not None:
        return Phase.TERMINATING
    if spec.paused or f.rollout_in(RolloutPhase.PAUSED):
        return Phase.PAUSED
    if f.failing or f.rolled_back or f.rollout_in(RolloutPhase.DEGRADED):
        return Phase.DEGRADED
    if f.converged:
        return Phase.AVAILABLE
    if not f.ready and spec.replicas:
        return Phase.PENDING
    return Phase.PROGRESSING


def _current_revision(f: _Facts) -> str | None:
    if f.rollout is not None:
        return f.rollout.stable_revision
    if f.converged:
        return f.target
    previous = f.inputs.fleet.status.current_revision
    if previous is not None:
        return previous
    return _majority_revision(f.live) if f.live else f.target


def derive_status(inputs: StatusInputs) -> NewFuseAgentStatus:
    """The whole status subresource for one fleet."""
    f = _Facts.of(inputs)
    fleet, previous = inputs.fleet, inputs.fleet.status
    generation = fleet.metadata.generation
    return NewFuseAgentStatus(
        observed_generation=generation
        if inputs.acted_on_generation
        else previous.observed_generation,
        phase=_phase(f),
        conditions=merge_conditions(previous.conditions, _conditions(f), inputs.now),
        replicas=len(f.live),
        ready_replicas=len(f.ready),
        updated_replicas=len(f.updated),
        current_revision=_current_revision(f),
        update_revision=inputs.update_revision,
        selector=naming.selector(fleet.metadata.name),
        capabilities=sorted(fleet.spec.capabilities) if f.ready else [],
        metrics=inputs.metrics if inputs.metrics is not None else previous.metrics,
        backlog=inputs.backlog if inputs.backlog is not None else previous.backlog,
        budget=_budget(inputs, previous.budget),
        rollout=f.rollout,
        endpoints=_endpoints(fleet, inputs.gateway_url),
        message=f"{f.counts}; revision {inputs.update_revision}",
    )


def _endpoints(fleet: NewFuseAgent, gateway_url: str | None) -> Endpoints | None:
    if not gateway_url:
        return None
    return Endpoints(a2a=a2a_url(gateway_url, fleet.metadata.namespace, fleet.metadata.name))


def _majority_revision(pods: Sequence[ObservedPod]) -> str:
    counts = Counter(pod.revision for pod in pods)
    return max(sorted(counts), key=counts.__getitem__)
