"""What the operator reports (`status`) and its words for it: phases, conditions, reasons.

Reason and EventType are also the vocabulary of the Events the operator posts, so they live with
the conditions rather than with the code that posts them: one list, shared by status and Events.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum

from pydantic import Field

from newfuse.api.base import KubeModel
from newfuse.api.budget import BudgetStatus
from newfuse.api.rollout import RolloutState
from newfuse.api.tasks import Backlog


class Phase(StrEnum):
    """The one-word summary of a fleet, shown by `kubectl get nfa`."""

    PENDING = "Pending"
    PROGRESSING = "Progressing"
    AVAILABLE = "Available"
    DEGRADED = "Degraded"
    PAUSED = "Paused"
    TERMINATING = "Terminating"


class ConditionType(StrEnum):
    """The conditions the operator maintains on every fleet."""

    AVAILABLE = "Available"
    PROGRESSING = "Progressing"
    DEGRADED = "Degraded"
    PAUSED = "Paused"
    REDIS_CONNECTED = "RedisConnected"
    AGENTS_HEARTBEATING = "AgentsHeartbeating"


class ConditionStatus(StrEnum):
    """metav1.ConditionStatus."""

    TRUE = "True"
    FALSE = "False"
    UNKNOWN = "Unknown"


class EventType(StrEnum):
    """The type of a core/v1 Event the operator posts: the two Kubernetes knows."""

    NORMAL = "Normal"
    WARNING = "Warning"


class Reason(StrEnum):
    """Machine-readable reasons for conditions and Events (CamelCase, as metav1.Condition wants)."""

    MINIMUM_REPLICAS_AVAILABLE = "MinimumReplicasAvailable"
    MINIMUM_REPLICAS_UNAVAILABLE = "MinimumReplicasUnavailable"
    SCALING_UP = "ScalingUp"
    SCALING_DOWN = "ScalingDown"
    NEW_REVISION_ROLLING_OUT = "NewRevisionRollingOut"
    WAITING_FOR_READY = "WaitingForReady"
    CONVERGED = "Converged"
    PODS_FAILED = "PodsFailed"
    PODS_CRASH_LOOPING = "PodsCrashLooping"
    PODS_OOM_KILLED = "PodsOOMKilled"
    PODS_HEALTHY = "PodsHealthy"
    SPEC_PAUSED = "SpecPaused"
    NOT_PAUSED = "NotPaused"
    REDIS_REACHABLE = "RedisReachable"
    REDIS_UNREACHABLE = "RedisUnreachable"
    HEARTBEATS_FRESH = "HeartbeatsFresh"
    HEARTBEATS_STALE = "HeartbeatsStale"
    NO_AGENTS_REPORTING = "NoAgentsReporting"
    # A rollout holds before stage 3: traffic uses a protocol major the canary does not speak.
    PROTOCOL_VERSIONS_IN_USE = "ProtocolVersionsInUse"
    # Event-only reasons.
    POD_CREATED = "PodCreated"
    POD_DELETED = "PodDeleted"
    REDIS_KEYS_REMOVED = "RedisKeysRemoved"
    REDIS_CLEANUP_WAITING = "RedisCleanupWaiting"
    REDIS_CLEANUP_SKIPPED = "RedisCleanupSkipped"
    PHASE_CHANGED = "PhaseChanged"
    DEADLOCK_BROKEN = "DeadlockBroken"
    BUDGET_SOFT_EXCEEDED = "BudgetSoftExceeded"
    BUDGET_HARD_EXCEEDED = "BudgetHardExceeded"
    ROLLOUT_IN_PROGRESS = "RolloutInProgress"
    ROLLOUT_PAUSED = "RolloutPaused"
    ROLLOUT_ABORTED = "RolloutAborted"
    ROLLOUT_DEGRADED = "RolloutDegraded"
    ROLLED_BACK = "RolledBack"


class Condition(KubeModel):
    """metav1.Condition."""

    type: str = Field(
        max_length=316,
        pattern=r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$",
    )
    status: ConditionStatus
    observed_generation: int | None = Field(default=None, ge=0)
    last_transition_time: dt.datetime
    reason: str = Field(
        min_length=1, max_length=1024, pattern=r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$"
    )
    message: str = Field(default="", max_length=32768)


class FleetMetrics(KubeModel):
    """What the fleet's agents report through Redis, folded by the operator."""

    requests_handled: int = Field(
        default=0, ge=0, description="Tasks taken by agents, all revisions."
    )
    tasks_completed: int = Field(
        default=0, ge=0, description="Tasks that produced a result (never decreases)."
    )
    tasks_failed: int = Field(
        default=0, ge=0, description="Tasks that ended in an error (never decreases)."
    )
    duplicate_executions: int = Field(
        default=0,
        ge=0,
        description="Task executions whose result was dropped because the task already had one.",
    )
    error_rate: float = Field(
        default=0.0, ge=0, le=1, description="tasksFailed / (tasksCompleted + tasksFailed)."
    )
    last_active: dt.datetime | None = Field(
        default=None, description="When any agent last finished a task."
    )
    deadlocks_broken: int = Field(
        default=0,
        ge=0,
        description="Cycles of delegations broken by failing their youngest waiter (never "
        "decreases).",
    )
    reporting_agents: int = Field(default=0, ge=0, description="Agents with a fresh heartbeat.")
    stale_agents: int = Field(default=0, ge=0, description="Agents whose heartbeat is overdue.")


class Endpoints(KubeModel):
    """Where clients reach the fleet."""

    a2a: str | None = Field(
        default=None,
        alias="a2a",  # the camel-case generator would say "a2A"
        description="The fleet's A2A v1.0 endpoint on the fleet API gateway; its Agent Card is "
        "at .well-known/agent-card.json under it.",
    )


class NewFuseAgentStatus(KubeModel):
    """What the operator observed, as of observedGeneration."""

    observed_generation: int | None = Field(
        default=None, description="The spec generation last acted on."
    )
    phase: Phase | None = None
    conditions: list[Condition] = Field(
        default_factory=list,
        description="Latest observations of the fleet's state.",
        json_schema_extra={"x-kubernetes-list-type": "map", "x-kubernetes-list-map-keys": ["type"]},
    )
    replicas: int = Field(default=0, description="Agent pods that exist, all revisions.")
    ready_replicas: int = Field(default=0, description="Agent pods that are Ready.")
    updated_replicas: int = Field(default=0, description="Agent pods of the update revision.")
    current_revision: str | None = Field(
        default=None, description="Template hash all pods last converged on."
    )
    update_revision: str | None = Field(
        default=None, description="Template hash of the current spec."
    )
    selector: str | None = Field(
        default=None, description="Label selector of the pods (scale subresource)."
    )
    capabilities: list[str] = Field(
        default_factory=list, description="Capabilities offered by Ready agents."
    )
    metrics: FleetMetrics | None = None
    backlog: Backlog | None = Field(
        default=None, description="Tasks waiting, in flight and retrying, per priority."
    )
    budget: BudgetStatus | None = Field(
        default=None, description="Today's model spend against spec.budget."
    )
    rollout: RolloutState | None = Field(
        default=None, description="The phased rollout, if one ran."
    )
    endpoints: Endpoints | None = Field(
        default=None, description="Where clients reach the fleet (set when a gateway is known)."
    )
    message: str | None = Field(default=None, description="Human-readable summary.")
