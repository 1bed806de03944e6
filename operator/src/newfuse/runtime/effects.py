"""What a reconcile does to the cluster: the planned pods, and the Events that say so.

Each write is followed by a Kubernetes Event on the fleet, so `kubectl describe nfa` tells its
owner what the operator did and why. A pod that already exists (409) or is already gone (404) is
not an error and gets no Event: another reconcile got there first.
"""

from __future__ import annotations

import datetime as dt

from newfuse import observability as obs
from newfuse.api.budget import BudgetState
from newfuse.api.v1alpha1 import (
    EventType,
    NewFuseAgent,
    NewFuseAgentSpec,
    NewFuseAgentStatus,
    Phase,
    Reason,
)
from newfuse.core.budget import newly_exceeded
from newfuse.core.planner import Plan
from newfuse.core.pods import AgentDefaults, build_pod
from newfuse.runtime.ports import KubePort
from newfuse.wire.keys import FleetKeys


async def apply_plan(
    kube: KubePort,
    fleet: NewFuseAgent,
    specs: dict[str, NewFuseAgentSpec],
    decided: Plan,
    now: dt.datetime,
    defaults: AgentDefaults,
) -> None:
    """Create and delete the plan's pods; ``specs`` holds each revision's spec."""
    meta = fleet.metadata
    for pod in decided.create:
        revision = pod.revision
        manifest = build_pod(
            fleet.model_copy(update={"spec": specs[revision]}), revision, pod.ordinal, defaults
        )
        if await kube.create_pod(manifest):
            obs.POD_ACTIONS.labels("create", "Desired").inc()
            await kube.post_event(
                meta.namespace, meta.name, meta.uid, EventType.NORMAL, Reason.POD_CREATED,
                f"created pod {manifest['metadata']['name']} (revision {revision})", now,
            )  # fmt: skip
    for victim in decided.delete:
        if await kube.delete_pod(meta.namespace, victim.name):
            obs.POD_ACTIONS.labels("delete", victim.reason).inc()
            await kube.post_event(
                meta.namespace, meta.name, meta.uid, EventType.NORMAL, Reason.POD_DELETED,
                f"deleted pod {victim.name} ({victim.reason})", now,
            )  # fmt: skip


async def announce_deadlocks(
    kube: KubePort, fleet: NewFuseAgent, status: NewFuseAgentStatus, now: dt.datetime
) -> None:
    """A Warning Event when the fleet's agents broke deadlocks since the last status."""
    before = fleet.status.metrics.deadlocks_broken if fleet.status.metrics else 0
    after = status.metrics.deadlocks_broken if status.metrics else 0
    if after <= before:
        return
    meta = fleet.metadata
    keys = FleetKeys(meta.namespace, meta.name)
    await kube.post_event(
        meta.namespace, meta.name, meta.uid, EventType.WARNING, Reason.DEADLOCK_BROKEN,
        f"{after - before} cycle(s) of delegations broken by failing the youngest waiter with "
        f"reason deadlock ({after} in all); the cycles are logged in {keys.deadlocks}", now,
    )  # fmt: skip


async def announce_budget(
    kube: KubePort, fleet: NewFuseAgent, status: NewFuseAgentStatus, now: dt.datetime
) -> None:
    """A Warning Event when today's spend reached a budget limit it had not reached before."""
    budget = status.budget
    if budget is None or not newly_exceeded(fleet.status.budget, budget):
        return
    hard = budget.state is BudgetState.HARD_EXCEEDED
    reason = Reason.BUDGET_HARD_EXCEEDED if hard else Reason.BUDGET_SOFT_EXCEEDED
    meta = fleet.metadata
    await kube.post_event(
        meta.namespace, meta.name, meta.uid, EventType.WARNING, reason,
        f"{budget.day}: {budget.message}", now,
    )  # fmt: skip


async def announce_phase(
    kube: KubePort, fleet: NewFuseAgent, status: NewFuseAgentStatus, now: dt.datetime
) -> None:
    """An Event when the fleet's phase changes (a Warning when it becomes Degraded)."""
    previous, meta = fleet.status.phase, fleet.metadata
    if status.phase == previous or status.phase is None:
        return
    event_type = EventType.WARNING if status.phase is Phase.DEGRADED else EventType.NORMAL
    await kube.post_event(
        meta.namespace, meta.name, meta.uid, event_type, Reason.PHASE_CHANGED,
        f"phase {previous or 'None'} -> {status.phase}: {status.message}", now,
    )  # fmt: skip
