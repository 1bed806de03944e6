"""The Kubernetes core/v1 shapes of the agent container: env, resources, tolerations.

They mirror a subset of the corev1 pod API, which the operator copies them into, so they are
checked against the Kubernetes reference rather than against the fleet's own fields; the spec
and the services the fleet uses both build on them (SecretKeyRef above all).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final

from pydantic import ConfigDict, Field, WithJsonSchema

from newfuse.api.base import CEL, KubeModel, cel

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
