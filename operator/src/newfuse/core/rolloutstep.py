"""A fleet to a rollout decision, and the decision back to pods, Events and a drain: all pure.

newfuse.core.rollout decides on an Observation; this module is everything between it and the
Kubernetes objects. It reads the user's one-shot action and marks it handled, counts Ready agents
per revision, keeps the pods of a revision whose template is lost, and picks the legacy revision to
drain once a rollout completes. The controller (newfuse.runtime) only reads and writes.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Sequence
from dataclasses import replace

from newfuse.api.rollout import TERMINAL_PHASES, HistoryEntry, RolloutReason, RolloutState
from newfuse.api.v1alpha1 import EventType, NewFuseAgent
from newfuse.core import naming
from newfuse.core.actions import parse_action
from newfuse.core.gates import revision_stats
from newfuse.core.golden import GoldenObservation
from newfuse.core.metrics import AgentReports
from newfuse.core.planner import Plan, plan_revisions
from newfuse.core.pods import ObservedPod
from newfuse.core.protocol import ProtocolObservation, speaks_by_revision
from newfuse.core.rollout import Decision, Observation, decide
from newfuse.core.shadow import ShadowObservation
from newfuse.core.status import RedisObservation

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
        RolloutReason.PROTOCOL_HELD,
        RolloutReason.ROLLED_BACK,
        RolloutReason.DEADLINE_EXCEEDED,
        RolloutReason.ABORTED,
        RolloutReason.REVERTED,
    }
)


def stable_revision(fleet: NewFuseAgent, revision: str) -> str:
    """The revision the fleet falls back to: the rollout's stable one, else the current one."""
    state = fleet.status.rollout
    if state is not None and state.phase not in TERMINAL_PHASES and state.stable_revision:
        return state.stable_revision
    return fleet.status.current_revision or revision


def observation_of(
    fleet: NewFuseAgent,
    revision: str,
    pods: Sequence[ObservedPod],
    reports: AgentReports | RedisObservation,
    stable_capabilities: frozenset[str] | None,
    golden: GoldenObservation | None = None,
    shadow: ShadowObservation | None = None,
    protocol: ProtocolObservation | None = None,
) -> Observation:
    """What the state machine sees: Ready agents and task counts per revision, the user's action.

    ``stable_capabilities`` is None when the stable revision's template is lost (or it is the
    update revision itself).
    """
    state = fleet.status.rollout
    action = fleet.metadata.annotations.get(naming.ROLLOUT_ACTION_ANNOTATION)
    capabilities = {revision: frozenset(fleet.spec.capabilities)}
    stable = stable_revision(fleet, revision)
    if stable != revision and stable_capabilities is not None:
        capabilities[stable] = stable_capabilities
    ready: dict[str, int] = {}
    for pod in pods:
        if pod.ready:
            ready[pod.revision] = ready.get(pod.revision, 0) + 1
    stats = {}
    if isinstance(reports, AgentReports):
        usage = reports.usage.by_revision if reports.usage is not None else {}
        stats = revision_stats(reports.counts, reports.p95_by_revision(), usage)
        if protocol is not None:
            protocol = replace(protocol, speaks=speaks_by_revision(reports.updates))
    return Observation(
        replicas=fleet.spec.replicas,
        update_revision=revision,
        current_revision=fleet.status.current_revision,
        ready=ready,
        capabilities=capabilities,
        stats=stats,
        controls=parse_action(action, state.last_action if state else None),
        golden=golden,
        shadow=shadow,
        protocol=protocol,
    )


def step(
    fleet: NewFuseAgent,
    revision: str,
    pods: Sequence[ObservedPod],
    reports: AgentReports | RedisObservation,
    stable_capabilities: frozenset[str] | None,
    now: dt.datetime,
    analysis: tuple[GoldenObservation | None, ShadowObservation | None] = (None, None),
    protocol: ProtocolObservation | None = None,
) -> Decision:
    """One rollout decision for the fleet, with the action annotation marked as handled.

    ``analysis`` holds what the golden and shadow gates saw this round, ``protocol`` the
    protocol majors traffic used (each revision's spoken ones are read from ``reports``).
    """
    observation = observation_of(
        fleet, revision, pods, reports, stable_capabilities, *analysis, protocol
    )
    decision = decide(fleet.spec.rollout, observation, fleet.status.rollout, now)
    action = fleet.metadata.annotations.get(naming.ROLLOUT_ACTION_ANNOTATION)
    if decision.state is None or not action or decision.state.last_action == action:
        return decision
    # Whatever the annotation says has now been acted on (or was stale): never again.
    state = decision.state.model_copy(update={"last_action": action})
    return Decision(state, decision.desired, decision.happened)


def pods_for(
    decision: Decision, known: Collection[str], pods: Sequence[ObservedPod], *, paused: bool
) -> Plan:
    """Pods to create and delete for the decision; ``known`` are revisions with a template.

    A revision whose template is unknown cannot get new pods, so its existing ones stay.
    """
    desired = {rev: n for rev, n in decision.desired.items() if rev in known}
    desired |= {
        rev: sum(1 for p in pods if p.revision == rev)
        for rev in decision.desired
        if rev not in known
    }
    return plan_revisions(desired, pods, paused=paused)


def target_revision(state: RolloutState | None, revision: str) -> str:
    """The revision pods converge on: stable once a rollout has ended, else the update one."""
    if state is not None and state.phase in TERMINAL_PHASES:
        return state.stable_revision
    return revision


def revision_to_drain(
    previous: RolloutState | None, happened: Sequence[HistoryEntry]
) -> str | None:
    """The legacy revision to drain now: the old stable one, when this round completed it."""
    if previous is None or not previous.stable_revision:
        return None
    completed = any(entry.reason is RolloutReason.COMPLETED for entry in happened)
    return previous.stable_revision if completed else None


def event_of(entry: HistoryEntry) -> tuple[EventType, str]:
    """The Kubernetes Event type and message for one history entry."""
    kind = EventType.WARNING if entry.reason in WARNING_ROLLOUT_REASONS else EventType.NORMAL
    return kind, f"{entry.stage} step {entry.step} ({entry.canary_agents} canary): {entry.message}"


def rollout_started_at(state: RolloutState | None) -> dt.datetime | None:
    """When the rollout in ``state`` began (its last start, restart or retry)."""
    if state is None:
        return None
    starts = {RolloutReason.STARTED, RolloutReason.RESTARTED, RolloutReason.RETRIED}
    return next((h.at for h in reversed(state.history) if h.reason in starts), None)
