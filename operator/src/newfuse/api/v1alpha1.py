"""The NewFuseAgent v1alpha1 API: the single source of the CRD schema.

Everything a user can write (spec) or read (status) is declared here once. `make crds` turns these
models into the CRD's structural OpenAPI schema, printer columns and CEL rules (see crdgen.py),
and the operator parses live objects with the same models, so the schema and the code never drift.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Annotated, Final

from pydantic import ConfigDict, Field, WithJsonSchema

from newfuse.api.base import CEL, KubeModel, cel
from newfuse.api.rollout import PhasedPolicy, RolloutState
from newfuse.api.tasks import Backlog, TaskPolicySpec

GROUP: Final = "newfuse.io"
VERSION: Final = "v1alpha1"
KIND: Final = "NewFuseAgent"
PLURAL: Final = "newfuseagents"
SINGULAR: Final = "newfuseagent"
SHORT_NAMES: Final = ("nfa",)
API_VERSION: Final = f"{GROUP}/{VERSION}"

# Pod names are "<fleet>-<revision hash (10)>-<ordinal>" and must stay a valid 63-char hostname.
MAX_FLEET_NAME_LENGTH: Final = 40
MAX_REPLICAS: Final = 1000
DEFAULT_PROTOCOL_VERSION: Final = "1.0"


# What `kubectl get nfa` shows (`-o wide` adds the priority-1 columns).
PRINTER_COLUMNS: Final = (
    {"name": "Desired", "type": "integer", "jsonPath": ".spec.replicas"},
    {"name": "Ready", "type": "integer", "jsonPath": ".status.readyReplicas"},
    {"name": "Updated", "type": "integer", "jsonPath": ".status.updatedReplicas", "priority": 1},
    {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
    {"name": "Revision", "type": "string", "jsonPath": ".status.updateRevision"},
    {"name": "Tasks", "type": "integer", "jsonPath": ".status.metrics.tasksCompleted"},
    {"name": "Backlog", "type": "integer", "jsonPath": ".status.backlog.waiting"},
    {
        "name": "Errors",
        "type": "number",
        "jsonPath": ".status.metrics.errorRate",
        "format": "float",
    },
    {"name": "Stale", "type": "integer", "jsonPath": ".status.metrics.staleAgents", "priority": 1},
    {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
)


QUANTITY_PATTERN: Final = (
    r"^(\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))"
    r"(([KMGTPE]i)|[numkMGTPE]|([eE](\+|-)?(([0-9]+(\.[0-9]*)?)|(\.[0-9]+))))?$"
)
# A Kubernetes resource.Quantity ("500m", "1Gi", 2): the int-or-string shape the API server knows.
Quantity = Annotated[
    int | str,
    WithJsonSchema(
        {
            "x-kubernetes-int-or-string": True,
            "anyOf": [{"type": "integer"}, {"type": "string"}],
            "pattern": QUANTITY_PATTERN,
        }
    ),
]
DnsLabel = Annotated[
    str, Field(min_length=1, max_length=63, pattern=r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")
]
Capability = Annotated[
    str,
    Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$",
        description="A capability name: lowercase letters, digits, '-', '_' and '.'.",
    ),
]


# -- enums --------------------------------------------------------------------------------------


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
    # Event-only reasons.
    POD_CREATED = "PodCreated"
    POD_DELETED = "PodDeleted"
    REDIS_KEYS_REMOVED = "RedisKeysRemoved"
    REDIS_CLEANUP_WAITING = "RedisCleanupWaiting"
    REDIS_CLEANUP_SKIPPED = "RedisCleanupSkipped"
    PHASE_CHANGED = "PhaseChanged"
    ROLLOUT_IN_PROGRESS = "RolloutInProgress"
    ROLLOUT_PAUSED = "RolloutPaused"
    ROLLOUT_ABORTED = "RolloutAborted"
    ROLLOUT_DEGRADED = "RolloutDegraded"
    ROLLED_BACK = "RolledBack"


class PullPolicy(StrEnum):
    """corev1.PullPolicy."""

    ALWAYS = "Always"
    IF_NOT_PRESENT = "IfNotPresent"
    NEVER = "Never"


class TolerationOperator(StrEnum):
    """corev1.TolerationOperator."""

    EXISTS = "Exists"
    EQUAL = "Equal"


class TaintEffect(StrEnum):
    """corev1.TaintEffect."""

    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    NO_EXECUTE = "NoExecute"


class RolloutStrategy(StrEnum):
    """How a changed agent template reaches the pods."""

    REPLACE = "Replace"
    PHASED = "Phased"


# -- spec ---------------------------------------------------------------------------------------


class SecretKeyRef(KubeModel):
    """A key in a Secret in the fleet's namespace."""

    name: DnsLabel = Field(description="Name of the Secret.")
    key: str = Field(min_length=1, max_length=253, description="Key within the Secret.")


class ConfigMapKeyRef(KubeModel):
    """A key in a ConfigMap in the fleet's namespace."""

    name: DnsLabel = Field(description="Name of the ConfigMap.")
    key: str = Field(min_length=1, max_length=253, description="Key within the ConfigMap.")


class FieldRef(KubeModel):
    """A field of the agent pod (Downward API), e.g. metadata.name."""

    field_path: str = Field(min_length=1, description="Path of the pod field, e.g. status.podIP.")


class EnvVarSource(KubeModel):
    """Where an environment variable's value comes from."""

    model_config = ConfigDict(
        json_schema_extra={
            CEL: [
                cel(
                    "[has(self.secretKeyRef), has(self.configMapKeyRef), has(self.fieldRef)]"
                    ".filter(x, x).size() == 1",
                    "exactly one of secretKeyRef, configMapKeyRef or fieldRef must be set",
                )
            ]
        }
    )

    secret_key_ref: SecretKeyRef | None = None
    config_map_key_ref: ConfigMapKeyRef | None = None
    field_ref: FieldRef | None = None


class EnvVar(KubeModel):
    """An environment variable for the agent container."""

    model_config = ConfigDict(
        json_schema_extra={
            CEL: [
                cel(
                    "!(has(self.value) && has(self.valueFrom))",
                    "value and valueFrom are mutually exclusive",
                    field_path=".valueFrom",
                )
            ]
        }
    )

    name: str = Field(
        min_length=1,
        max_length=253,
        pattern=r"^[-._a-zA-Z][-._a-zA-Z0-9]*$",
        description="Variable name.",
    )
    value: str | None = Field(default=None, description="Literal value.")
    value_from: EnvVarSource | None = Field(
        default=None, description="Value from a Secret, ConfigMap or pod field."
    )


class ResourceRequirements(KubeModel):
    """Compute resources for the agent container."""

    requests: dict[str, Quantity] | None = Field(
        default=None, description="Minimum resources, e.g. cpu: 100m."
    )
    limits: dict[str, Quantity] | None = Field(default=None, description="Maximum resources.")


class Toleration(KubeModel):
    """corev1.Toleration."""

    key: str | None = None
    operator: TolerationOperator | None = None
    value: str | None = None
    effect: TaintEffect | None = None
    toleration_seconds: int | None = None


class GatewaySpec(KubeModel):
    """The OpenAI-compatible model gateway the agents call."""

    model_config = ConfigDict(
        json_schema_extra={
            CEL: [
                cel(
                    "!has(self.model) || has(self.endpoint)",
                    "gateway.model requires gateway.endpoint",
                    field_path=".endpoint",
                    reason="FieldValueRequired",
                ),
                cel(
                    "!has(self.credentialsSecretRef) || has(self.endpoint)",
                    "gateway.credentialsSecretRef requires gateway.endpoint",
                    field_path=".endpoint",
                    reason="FieldValueRequired",
                ),
            ]
        }
    )

    endpoint: str | None = Field(
        default=None,
        pattern=r"^https?://[^\s]+$",
        max_length=2048,
        description="Base URL of the chat-completions API, e.g. http://llm-gateway:8080/v1.",
    )
    model: str | None = Field(
        default=None, max_length=253, description="Model name sent with each request."
    )
    rate_limit_per_second: float | None = Field(
        default=None, gt=0, description="Fleet-wide request rate limit, shared by all agents."
    )
    timeout_seconds: float = Field(default=30.0, gt=0, le=600, description="Per-request timeout.")
    credentials_secret_ref: SecretKeyRef | None = Field(
        default=None, description="Secret key holding the gateway's API key."
    )


class RedisSpec(KubeModel):
    """Which Redis the fleet uses. Omitted: the operator's own Redis."""

    url_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Secret key holding a redis:// or rediss:// URL (ACL user and password go in it: "
            "rediss://user:password@host:6380/0)."
        ),
    )
    ca_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the PEM CA bundle that signed the rediss:// server's cert.",
    )


class SigningSpec(KubeModel):
    """Signing of every message the fleet's agents send and accept."""

    key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding the fleet's signing key (default: the operator's).",
    )
    accept_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Secret key holding more keys the agents accept but never sign with, one per line: "
            "the accept-set that lets a key rotate without refused messages (README, Key "
            "rotation)."
        ),
    )
    required: bool = Field(
        default=True, description="Refuse (dead-letter) unsigned messages once a key is set."
    )


class EncryptionSpec(KubeModel):
    """Sealing of task payloads and results (AES-256-GCM): Redis and the DLQ hold no plaintext."""

    key_secret_ref: SecretKeyRef = Field(
        description="Secret key holding the fleet's data key (any random text of 32+ bytes)."
    )
    accept_key_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description="Secret key holding older data keys still opened, one per line (rotation).",
    )


class RolloutSpec(PhasedPolicy):
    """How template changes roll out: all at once (Replace), or as a gated phased migration."""

    model_config = ConfigDict(
        json_schema_extra={
            CEL: [
                cel(
                    "self.maxSurge > 0 || self.maxUnavailable > 0",
                    "maxSurge and maxUnavailable cannot both be 0: no agent could ever move",
                    field_path=".maxSurge",
                )
            ]
        }
    )

    strategy: RolloutStrategy = Field(
        default=RolloutStrategy.PHASED,
        description="Replace: start the new revision's pods, then remove old ones as new ones "
        "become Ready. Phased: canary, gradual steps and full cutover, each behind gates on "
        "agent metrics.",
    )


class NewFuseAgentSpec(KubeModel):
    """The desired fleet: what agents to run, how many, and how to change them."""

    replicas: int = Field(default=1, ge=0, le=MAX_REPLICAS, description="Number of agent pods.")
    capabilities: list[Capability] = Field(
        default_factory=list,
        max_length=32,
        description="What these agents can do, e.g. summarize.",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    image: str = Field(min_length=1, max_length=1024, description="The agent container image.")
    image_pull_policy: PullPolicy | None = Field(default=None, description="Image pull policy.")
    command: list[str] | None = Field(default=None, description="Entrypoint override.")
    args: list[str] | None = Field(default=None, description="Arguments to the entrypoint.")
    env: list[EnvVar] | None = Field(
        default=None, max_length=128, description="Extra environment variables."
    )
    resources: ResourceRequirements | None = Field(
        default=None, description="Compute resources per agent."
    )
    node_selector: dict[str, str] | None = Field(
        default=None, description="Node labels the pods must match."
    )
    tolerations: list[Toleration] | None = Field(
        default=None, description="Taints the pods tolerate."
    )
    service_account_name: DnsLabel | None = Field(
        default=None, description="Service account for the pods (no API token is mounted)."
    )
    concurrency: int = Field(default=4, ge=1, le=256, description="Tasks each agent runs at once.")
    gateway: GatewaySpec | None = Field(default=None, description="Model gateway configuration.")
    redis: RedisSpec | None = Field(default=None, description="Redis connection override.")
    signing: SigningSpec | None = Field(default=None, description="Message signing override.")
    encryption: EncryptionSpec | None = Field(
        default=None,
        description="Seal task inputs and results with a per-fleet data key (off: plaintext).",
    )
    protocol_version: str = Field(
        default=DEFAULT_PROTOCOL_VERSION,
        pattern=r"^[0-9]+\.[0-9]+$",
        description="A2A protocol version (major.minor) the agents speak.",
    )
    paused: bool = Field(default=False, description="Stop all changes to the fleet's pods.")
    rollout: RolloutSpec = Field(default_factory=RolloutSpec, description="Rollout policy.")
    tasks: TaskPolicySpec | None = Field(
        default=None,
        description="Task policy: timeouts, claims, retries, retention and size limits "
        "(unset fields take the defaults).",
    )


# -- status -------------------------------------------------------------------------------------


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
    reporting_agents: int = Field(default=0, ge=0, description="Agents with a fresh heartbeat.")
    stale_agents: int = Field(default=0, ge=0, description="Agents whose heartbeat is overdue.")


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
    rollout: RolloutState | None = Field(
        default=None, description="The phased rollout, if one ran."
    )
    message: str | None = Field(default=None, description="Human-readable summary.")


class ObjectMeta(KubeModel):
    """The metadata fields the operator reads (everything else is passed through)."""

    model_config = ConfigDict(extra="ignore")

    name: str
    namespace: str = "default"
    uid: str = ""
    generation: int = 0
    resource_version: str = ""
    deletion_timestamp: str | None = None
    finalizers: list[str] = Field(default_factory=list)
    labels: dict[str, str] = Field(default_factory=dict)
    annotations: dict[str, str] = Field(default_factory=dict)


class NewFuseAgent(KubeModel):
    """A fleet of AI agents."""

    model_config = ConfigDict(
        extra="ignore",
        json_schema_extra={
            CEL: [
                cel(
                    f"size(self.metadata.name) <= {MAX_FLEET_NAME_LENGTH}",
                    f"metadata.name must be at most {MAX_FLEET_NAME_LENGTH} characters "
                    "(pod names append a revision hash and an ordinal)",
                    reason="FieldValueInvalid",
                )
            ]
        },
    )

    api_version: str = API_VERSION
    kind: str = KIND
    metadata: ObjectMeta
    spec: NewFuseAgentSpec
    status: NewFuseAgentStatus = Field(default_factory=NewFuseAgentStatus)
