"""The NewFuseAgent v1alpha1 API: the single source of the CRD schema.

Everything a user can write (spec) or read (status) is declared once, in this package. `make crds`
turns these models into the CRD's structural OpenAPI schema, printer columns and CEL rules (see
crdgen.py), and the operator parses live objects with the same models, so the schema and the code
never drift.

This module holds the resource itself (identity, printer columns, metadata) and re-exports the
models of spec.py, status.py and their parts, so the whole version is importable from one place.
"""

from __future__ import annotations

from typing import Final

from pydantic import ConfigDict, Field

from newfuse.api.base import CEL, KubeModel, cel
from newfuse.api.podspec import (
    QUANTITY_PATTERN,
    ConfigMapKeyRef,
    DnsLabel,
    EnvVar,
    EnvVarSource,
    FieldRef,
    PullPolicy,
    Quantity,
    ResourceRequirements,
    SecretKeyRef,
    TaintEffect,
    Toleration,
    TolerationOperator,
)
from newfuse.api.rollout import PhasedPolicy, RolloutState
from newfuse.api.services import EncryptionSpec, GatewaySpec, RedisSpec, SigningSpec
from newfuse.api.spec import (
    DEFAULT_PROTOCOL_VERSION,
    MAX_REPLICAS,
    Capability,
    NewFuseAgentSpec,
    RolloutSpec,
    RolloutStrategy,
)
from newfuse.api.status import (
    Condition,
    ConditionStatus,
    ConditionType,
    EventType,
    FleetMetrics,
    NewFuseAgentStatus,
    Phase,
    Reason,
)
from newfuse.api.tasks import Backlog, TaskPolicySpec

__all__ = [
    "API_VERSION",
    "DEFAULT_PROTOCOL_VERSION",
    "GROUP",
    "KIND",
    "MAX_FLEET_NAME_LENGTH",
    "MAX_REPLICAS",
    "PLURAL",
    "PRINTER_COLUMNS",
    "QUANTITY_PATTERN",
    "SHORT_NAMES",
    "SINGULAR",
    "VERSION",
    "Backlog",
    "Capability",
    "Condition",
    "ConditionStatus",
    "ConditionType",
    "ConfigMapKeyRef",
    "DnsLabel",
    "EncryptionSpec",
    "EnvVar",
    "EnvVarSource",
    "EventType",
    "FieldRef",
    "FleetMetrics",
    "GatewaySpec",
    "NewFuseAgent",
    "NewFuseAgentSpec",
    "NewFuseAgentStatus",
    "ObjectMeta",
    "Phase",
    "PhasedPolicy",
    "PullPolicy",
    "Quantity",
    "Reason",
    "RedisSpec",
    "ResourceRequirements",
    "RolloutSpec",
    "RolloutState",
    "RolloutStrategy",
    "SecretKeyRef",
    "SigningSpec",
    "TaintEffect",
    "TaskPolicySpec",
    "Toleration",
    "TolerationOperator",
]

GROUP: Final = "newfuse.io"
VERSION: Final = "v1alpha1"
KIND: Final = "NewFuseAgent"
PLURAL: Final = "newfuseagents"
SINGULAR: Final = "newfuseagent"
SHORT_NAMES: Final = ("nfa",)
API_VERSION: Final = f"{GROUP}/{VERSION}"

# Pod names are "<fleet>-<revision hash (10)>-<ordinal>" and must stay a valid 63-char hostname.
MAX_FLEET_NAME_LENGTH: Final = 40


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
