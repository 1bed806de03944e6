"""Fold the StateUpdates that agents write to Redis into the fleet's status.metrics."""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable
from dataclasses import dataclass

from newfuse.api.budget import BudgetStatus
from newfuse.api.rollout import GateVerdict
from newfuse.api.v1alpha1 import FleetMetrics, NewFuseAgentStatus
from newfuse.core.budget import Usage
from newfuse.wire.state import (
    AgentMetrics,
    AgentState,
    AgentStatus,
    FleetSummary,
    RolloutSummary,
    StateUpdate,
)


def fold_agent_states(
    updates: Iterable[StateUpdate],
    live_agents: Collection[str],
    now: dt.datetime,
    heartbeat_timeout: dt.timedelta,
) -> FleetMetrics:
    """Sum the counters of every agent that ever reported, and judge the live ones' heartbeats.

    Counters of agents whose pods are gone still count: the fleet's totals must not shrink when a
    pod is replaced. Only agents whose pod still exists can be stale.
    """
    completed = failed = handled = reporting = stale = 0
    last_active: dt.datetime | None = None
    for update in updates:
        metrics = update.state.metrics
        completed += metrics.tasks_completed
        failed += metrics.tasks_failed
        handled += metrics.requests_handled
        if metrics.last_active and (last_active is None or metrics.last_active > last_active):
            last_active = metrics.last_active
        if update.agent_id in live_agents and update.state.status is AgentStatus.ACTIVE:
            if now - update.timestamp > heartbeat_timeout:
                stale += 1
            else:
                reporting += 1
    finished = completed + failed
    return FleetMetrics(
        requests_handled=handled,
        tasks_completed=completed,
        tasks_failed=failed,
        error_rate=round(failed / finished, 4) if finished else 0.0,
        last_active=last_active,
        reporting_agents=reporting,
        stale_agents=stale,
    )


@dataclass(frozen=True)
class TaskCounters:
    """The fleet's task counters in Redis, incremented atomically by the agents' result step."""

    completed: int = 0
    failed: int = 0
    duplicates: int = 0
    deadlocks: int = 0


def settle_totals(
    folded: FleetMetrics, counters: TaskCounters | None, previous: FleetMetrics | None
) -> FleetMetrics:
    """The fleet's totals: from the fleet counters, and never below what status showed before.

    An agent's own counters start again from 0 when its process restarts, so their sum can fall;
    the fleet counters cannot. ``counters`` is None while the fleet has none (no result stored
    yet, or agents too old to count there): then the agents' sum is the best there is. Taking the
    maximum with the previous status keeps a total from going backwards whichever source it came
    from (and across a counter hash lost with its Redis).
    """
    completed, failed = folded.tasks_completed, folded.tasks_failed
    duplicates, deadlocks = folded.duplicate_executions, folded.deadlocks_broken
    if counters is not None:
        completed, failed, duplicates = counters.completed, counters.failed, counters.duplicates
        deadlocks = counters.deadlocks
    handled = folded.requests_handled
    if previous is not None:
        deadlocks = max(deadlocks, previous.deadlocks_broken)
        completed = max(completed, previous.tasks_completed)
        failed = max(failed, previous.tasks_failed)
        duplicates = max(duplicates, previous.duplicate_executions)
        handled = max(handled, previous.requests_handled)
    finished = completed + failed
    return folded.model_copy(
        update={
            "requests_handled": handled,
            "tasks_completed": completed,
            "tasks_failed": failed,
            "duplicate_executions": duplicates,
            "deadlocks_broken": deadlocks,
            "error_rate": round(failed / finished, 4) if finished else 0.0,
        }
    )


def fleet_state_update(
    agent_id: str,
    capabilities: list[str],
    metrics: FleetMetrics,
    version: int,
    now: dt.datetime,
    *,
    ready: bool,
) -> StateUpdate:
    """The operator's summary of a fleet, mirrored to Redis as the seed's StateUpdate."""
    return StateUpdate(
        agent_id=agent_id,
        state=AgentState(
            id=agent_id,
            status=AgentStatus.ACTIVE if ready else AgentStatus.INACTIVE,
            capabilities=capabilities,
            metrics=AgentMetrics(
                requests_handled=metrics.requests_handled,
                last_active=metrics.last_active,
                tasks_completed=metrics.tasks_completed,
                tasks_failed=metrics.tasks_failed,
            ),
        ),
        version=version,
        timestamp=now,
    )


def fleet_summary(status: NewFuseAgentStatus, protocol_version: str) -> FleetSummary:
    """What the live feed shows of a fleet's status (phase, pods, rollout), and its A2A version."""
    rollout = status.rollout
    return FleetSummary(
        phase=status.phase.value if status.phase is not None else None,
        replicas=status.replicas,
        ready_replicas=status.ready_replicas,
        updated_replicas=status.updated_replicas,
        update_revision=status.update_revision,
        rollout=None
        if rollout is None
        else RolloutSummary(
            phase=rollout.phase.value,
            stage=rollout.stage.value,
            step=rollout.step,
            stable_revision=rollout.stable_revision,
            canary_revision=rollout.canary_revision,
            canary_agents=rollout.canary_agents,
            message=rollout.message,
            gate=gate_line(rollout.last_verdict),
        ),
        message=status.message,
        budget=None if status.budget is None else budget_line(status.budget),
        protocol_version=protocol_version,
    )


def gate_line(verdict: GateVerdict | None) -> str:
    """The last verdict as the live page shows it: result, reason, the quality numbers."""
    if verdict is None:
        return ""
    m, parts = verdict.measured, [f"{verdict.result.value}: {verdict.reason}"]
    if m.golden_pass_rate is not None:
        stable = "-" if m.stable_golden_pass_rate is None else f"{m.stable_golden_pass_rate:.0%}"
        parts.append(f"golden {m.golden_pass_rate:.0%} (stable {stable})")
    if m.shadow_agreement is not None:
        parts.append(f"shadow {m.shadow_agreement:.0%} agreed of {m.shadow_samples}")
    if m.cost_per_task is not None or m.tokens_per_task is not None:
        mine = m.cost_per_task if m.cost_per_task is not None else m.tokens_per_task
        theirs = m.stable_cost_per_task if m.cost_per_task is not None else m.stable_tokens_per_task
        unit = "cost" if m.cost_per_task is not None else "tokens"
        parts.append(f"{unit}/task {mine:g} (stable {'-' if theirs is None else f'{theirs:g}'})")
    return "; ".join(parts)


def budget_line(budget: BudgetStatus) -> str:
    """Today's spend as the live page shows it."""
    line = f"{budget.day}: cost {budget.cost:g}, {budget.tokens:,} tokens, {budget.state.value}"
    return f"{line} ({budget.message})" if budget.message else line


@dataclass(frozen=True)
class AgentReports:
    """What agents reported to Redis: their state updates and the per-revision task counts."""

    updates: list[StateUpdate]
    counts: dict[str, tuple[int, int, int]]  # completed, failed, rejected
    retired: list[StateUpdate]
    usage: Usage | None = None  # tokens and cost the agents' model calls used

    def all_agents(self) -> list[StateUpdate]:
        """Live registrations, plus retired ones not registered again (each agent counted once)."""
        live = {u.agent_id for u in self.updates}
        return self.updates + [r for r in self.retired if r.agent_id not in live]

    def p95_by_revision(self) -> dict[str, float]:
        """The worst p95 latency reported by any agent of each revision."""
        worst: dict[str, float] = {}
        for update in self.updates:
            revision, p95 = update.state.revision, update.state.metrics.latency_p95_ms
            if revision is not None and p95 is not None:
                worst[revision] = max(p95, worst.get(revision, 0.0))
        return worst


def legacy_agents(
    updates: Iterable[StateUpdate], live_agents: Collection[str], live_revisions: Collection[str]
) -> list[StateUpdate]:
    """Registrations to retire: drained (inactive) agents whose pod and revision are both gone."""
    return [
        u
        for u in updates
        if u.agent_id not in live_agents
        and u.state.status is AgentStatus.INACTIVE
        and u.state.revision not in live_revisions
    ]
