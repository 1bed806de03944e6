"""The fleet's desired state (`spec`): what agents to run, how many, and how to change them.

The sub-models live in podspec (the container's corev1 shapes), services (gateway, Redis, keys),
rollout and tasks; this module puts them together into the one spec a user writes.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final

from pydantic import ConfigDict, Field

from newfuse.api.base import CEL, KubeModel, cel
from newfuse.api.budget import BudgetSpec
from newfuse.api.memory import MemorySpec
from newfuse.api.podspec import DnsLabel, EnvVar, PullPolicy, ResourceRequirements, Toleration
from newfuse.api.review import ReviewSpec
from newfuse.api.rollout import PhasedPolicy
from newfuse.api.services import EncryptionSpec, GatewaySpec, RedisSpec, SigningSpec
from newfuse.api.tasks import TaskPolicySpec

MAX_REPLICAS: Final = 1000
DEFAULT_PROTOCOL_VERSION: Final = "1.0"

Capability = Annotated[
    str,
    Field(
        min_length=1,
        max_length=63,
        pattern=r"^[a-z0-9]([-a-z0-9_.]*[a-z0-9])?$",
        description="A capability name: lowercase letters, digits, '-', '_' and '.'.",
    ),
]


class RolloutStrategy(StrEnum):
    """How a changed agent template reaches the pods."""

    REPLACE = "Replace"
    PHASED = "Phased"


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
    review: ReviewSpec | None = Field(
        default=None,
        description="Human review: which handlers' outputs wait for a person's approval.",
    )
    budget: BudgetSpec | None = Field(
        default=None, description="Daily (UTC) limits on model spend: soft warns, hard refuses."
    )
    memory: MemorySpec | None = Field(
        default=None,
        description="Fleet memory: its embedding model, size limit and default TTL.",
    )
    tasks: TaskPolicySpec | None = Field(
        default=None,
        description="Task policy: timeouts, claims, retries, retention and size limits "
        "(unset fields take the defaults).",
    )
