"""The status a fleet should show, derived from its spec, its pods, Redis and agent metrics.

Conditions follow metav1.Condition: `lastTransitionTime` moves only when a condition's status
flips, so `kubectl describe` shows how long a fleet has been Available or Degraded.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from newfuse.api.rollout import TERMINAL_PHASES, RolloutPhase, RolloutState
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


def derive_status(inputs: StatusInputs) -> NewFuseAgentStatus:
    """The whole status subresource for one fleet."""
    fleet, now = inputs.fleet, inputs.now
    spec, previous = fleet.spec, fleet.status
    generation = fleet.metadata.generation
    live = [p for p in inputs.pods if not p.terminating]
    ready = [p for p in live if p.ready]
    updated = [p for p in live if p.revision == inputs.update_revision]
    failing = [p for p in live if p.health in (PodHealth.FAILED, PodHealth.CRASH_LOOPING)]
    crash_looping = [p for p in failing if p.health is PodHealth.CRASH_LOOPING]
    target = inputs.target_revision or inputs.update_revision
    rollout = inputs.rollout
    rollout_active = rollout is not None and rollout.phase not in TERMINAL_PHASES
    rolled_back = (
        rollout is not None
        and rollout.phase in (RolloutPhase.ROLLED_BACK, RolloutPhase.ABORTED)
        and rollout.stable_revision != inputs.update_revision
    )
    converged = (
        inputs.plan.empty
        and not inputs.plan.blocked
        and not rollout_active
        and len(live) == spec.replicas
        and sum(1 for p in live if p.revision == target) == spec.replicas
        and len(ready) == spec.replicas
    )
    available = len(ready) >= spec.replicas
    terminating = fleet.metadata.deletion_timestamp is not None

    def cond(
        kind: ConditionType, status: ConditionStatus, reason: Reason, message: str
    ) -> Condition:
        return _condition(kind, status, reason, message, generation, now)

    counts = f"{len(ready)}/{spec.replicas} agents ready"
    wanted = [
        cond(ConditionType.AVAILABLE, TRUE, Reason.MINIMUM_REPLICAS_AVAILABLE, counts)
        if available
        else cond(ConditionType.AVAILABLE, FALSE, Reason.MINIMUM_REPLICAS_UNAVAILABLE, counts),
    ]
    held_back_reason = (
        Reason.ROLLOUT_ABORTED
        if rollout is not None and rollout.phase is RolloutPhase.ABORTED
        else Reason.ROLLED_BACK
    )
    if spec.paused:
        wanted.append(
            cond(ConditionType.PROGRESSING, FALSE, Reason.SPEC_PAUSED, "spec.paused is true")
        )
    elif rollout is not None and rollout_active:
        wanted.append(
            cond(
                ConditionType.PROGRESSING,
                TRUE,
                Reason.ROLLOUT_IN_PROGRESS,
                f"{rollout.phase}: {rollout.message}",
            )
        )
    elif rollout is not None and rolled_back:
        wanted.append(cond(ConditionType.PROGRESSING, FALSE, held_back_reason, rollout.message))
    elif converged:
        wanted.append(
            cond(
                ConditionType.PROGRESSING,
                FALSE,
                Reason.CONVERGED,
                f"all agents at revision {target}",
            )
        )
    else:
        if any(p.revision != inputs.update_revision for p in live):
            reason = Reason.NEW_REVISION_ROLLING_OUT
        elif len(live) < spec.replicas:
            reason = Reason.SCALING_UP
        elif len(live) > spec.replicas:
            reason = Reason.SCALING_DOWN
        else:
            reason = Reason.WAITING_FOR_READY
        wanted.append(
            cond(
                ConditionType.PROGRESSING,
                TRUE,
                reason,
                f"{len(updated)}/{spec.replicas} agents at revision "
                f"{inputs.update_revision}, {counts}",
            )
        )
    if failing:
        reason, hint = _failing_reason(failing, crash_looping)
        wanted.append(
            cond(
                ConditionType.DEGRADED,
                TRUE,
                reason,
                f"failing pods: {_sorted_names(failing)}{hint}",
            )
        )
    elif rollout is not None and rolled_back:
        wanted.append(cond(ConditionType.DEGRADED, TRUE, held_back_reason, rollout.message))
    elif rollout is not None and rollout.phase is RolloutPhase.DEGRADED:
        wanted.append(cond(ConditionType.DEGRADED, TRUE, Reason.ROLLOUT_DEGRADED, rollout.message))
    else:
        wanted.append(cond(ConditionType.DEGRADED, FALSE, Reason.PODS_HEALTHY, "no failing pods"))
    rollout_paused = rollout is not None and rollout.phase is RolloutPhase.PAUSED
    if spec.paused:
        wanted.append(
            cond(ConditionType.PAUSED, TRUE, Reason.SPEC_PAUSED, "changes to pods are suspended")
        )
    elif rollout_paused:
        wanted.append(
            cond(ConditionType.PAUSED, TRUE, Reason.ROLLOUT_PAUSED, "spec.rollout.paused is true")
        )
    else:
        wanted.append(cond(ConditionType.PAUSED, FALSE, Reason.NOT_PAUSED, ""))
    if inputs.redis is not None:
        wanted.append(
            cond(ConditionType.REDIS_CONNECTED, TRUE, Reason.REDIS_REACHABLE, "")
            if inputs.redis.reachable
            else cond(
                ConditionType.REDIS_CONNECTED,
                FALSE,
                Reason.REDIS_UNREACHABLE,
                inputs.redis.error[:1024],
            )
        )
    metrics = inputs.metrics if inputs.metrics is not None else previous.metrics
    if inputs.metrics is not None:
        if inputs.metrics.stale_agents:
            wanted.append(
                cond(
                    ConditionType.AGENTS_HEARTBEATING,
                    FALSE,
                    Reason.HEARTBEATS_STALE,
                    f"{inputs.metrics.stale_agents} agent(s) missed their heartbeat",
                )
            )
        elif inputs.metrics.reporting_agents:
            wanted.append(
                cond(
                    ConditionType.AGENTS_HEARTBEATING,
                    TRUE,
                    Reason.HEARTBEATS_FRESH,
                    f"{inputs.metrics.reporting_agents} agent(s) reporting",
                )
            )
        else:
            wanted.append(
                cond(
                    ConditionType.AGENTS_HEARTBEATING,
                    UNKNOWN,
                    Reason.NO_AGENTS_REPORTING,
                    "no agent has reported yet",
                )
            )
    else:
        # Keep what was last known rather than flapping to Unknown during a Redis outage.
        wanted += [c for c in previous.conditions if c.type == ConditionType.AGENTS_HEARTBEATING]

    if terminating:
        phase = Phase.TERMINATING
    elif spec.paused or rollout_paused:
        phase = Phase.PAUSED
    elif failing or rolled_back or (rollout is not None and rollout.phase is RolloutPhase.DEGRADED):
        phase = Phase.DEGRADED
    elif converged:
        phase = Phase.AVAILABLE
    elif not ready and spec.replicas:
        phase = Phase.PENDING
    else:
        phase = Phase.PROGRESSING

    current_revision = previous.current_revision
    if rollout is not None:
        current_revision = rollout.stable_revision
    elif converged or current_revision is None:
        current_revision = target if converged or not live else _majority_revision(live)
    return NewFuseAgentStatus(
        observed_generation=generation
        if inputs.acted_on_generation
        else previous.observed_generation,
        phase=phase,
        conditions=merge_conditions(previous.conditions, wanted, now),
        replicas=len(live),
        ready_replicas=len(ready),
        updated_replicas=len(updated),
        current_revision=current_revision,
        update_revision=inputs.update_revision,
        selector=naming.selector(fleet.metadata.name),
        capabilities=sorted(spec.capabilities) if ready else [],
        metrics=metrics,
        backlog=inputs.backlog if inputs.backlog is not None else previous.backlog,
        rollout=rollout,
        message=f"{counts}; revision {inputs.update_revision}",
    )


def _majority_revision(pods: Sequence[ObservedPod]) -> str:
    counts: dict[str, int] = {}
    for pod in pods:
        counts[pod.revision] = counts.get(pod.revision, 0) + 1
    return max(sorted(counts), key=lambda r: counts[r])
