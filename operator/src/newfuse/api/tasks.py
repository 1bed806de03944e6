"""The fleet's task policy (`spec.tasks`) and the task backlog it reports (`status.backlog`).

`spec.tasks` is the user's face of `newfuse.wire.taskpolicy.TaskPolicy`: every field is optional
and an unset one takes TaskPolicy's default. The API layer may not import the wire layer, so the
bounds and the defaults the cross-field CEL rules need are spelled here again;
tests/unit/test_task_policy_spec.py holds the two copies together, so they cannot drift.
"""

from __future__ import annotations

from typing import Final, Self

from pydantic import ConfigDict, Field, model_validator

from newfuse.api.base import CEL, KubeModel, cel

MIB: Final = 1024 * 1024
# TaskPolicy's defaults of the fields the cross-field rules compare (an unset field means these).
DEFAULT_CLAIM_IDLE_SECONDS: Final = 30.0
DEFAULT_LEASE_RENEW_SECONDS: Final = 10.0
DEFAULT_RETRY_BASE_SECONDS: Final = 2.0
DEFAULT_RETRY_MAX_SECONDS: Final = 300.0


def _or_default(field: str, default: float) -> str:
    return f"(has(self.{field}) ? self.{field} : {default!r})"


RENEW_WITHIN_CLAIM_RULE: Final = (
    f"{_or_default('leaseRenewSeconds', DEFAULT_LEASE_RENEW_SECONDS)} * 2.0 <= "
    f"{_or_default('claimIdleSeconds', DEFAULT_CLAIM_IDLE_SECONDS)}"
)
RETRY_BASE_WITHIN_MAX_RULE: Final = (
    f"{_or_default('retryBaseSeconds', DEFAULT_RETRY_BASE_SECONDS)} <= "
    f"{_or_default('retryMaxSeconds', DEFAULT_RETRY_MAX_SECONDS)}"
)
RENEW_WITHIN_CLAIM_MESSAGE: Final = (
    "leaseRenewSeconds must be at most half of claimIdleSeconds (defaults: "
    f"{DEFAULT_LEASE_RENEW_SECONDS:g} and {DEFAULT_CLAIM_IDLE_SECONDS:g}): a live worker renews "
    "its claims twice within one claim bound"
)
RETRY_BASE_WITHIN_MAX_MESSAGE: Final = (
    "retryBaseSeconds must not exceed retryMaxSeconds (defaults: "
    f"{DEFAULT_RETRY_BASE_SECONDS:g} and {DEFAULT_RETRY_MAX_SECONDS:g})"
)


class TaskPolicySpec(KubeModel):
    """How the fleet's tasks are run, retried, kept and bounded. Unset fields take the defaults.

    The agents receive the whole policy as environment variables; changing it is a new revision.
    """

    model_config = ConfigDict(
        json_schema_extra={
            CEL: [
                cel(
                    RENEW_WITHIN_CLAIM_RULE,
                    RENEW_WITHIN_CLAIM_MESSAGE,
                    field_path=".leaseRenewSeconds",
                ),
                cel(
                    RETRY_BASE_WITHIN_MAX_RULE,
                    RETRY_BASE_WITHIN_MAX_MESSAGE,
                    field_path=".retryBaseSeconds",
                ),
            ]
        }
    )

    timeout_seconds: float | None = Field(
        default=None,
        gt=0,
        le=86400,
        description="Timeout of a task that sets none of its own (default 600).",
    )
    claim_idle_seconds: float | None = Field(
        default=None,
        gt=0,
        description="A task whose worker has not renewed its claim for this long is taken over "
        "by another agent (default 30).",
    )
    lease_renew_seconds: float | None = Field(
        default=None,
        gt=0,
        description="How often a worker renews the claims of its tasks, and how often agents "
        "look for abandoned ones; at most half of claimIdleSeconds (default 10).",
    )
    retry_base_seconds: float | None = Field(
        default=None,
        gt=0,
        description="Delay before a failed task's first retry; doubles per attempt, with jitter "
        "(default 2).",
    )
    retry_max_seconds: float | None = Field(
        default=None, gt=0, description="Cap of one retry delay (default 300)."
    )
    result_ttl_seconds: float | None = Field(
        default=None,
        gt=0,
        alias="resultTTLSeconds",
        description="How long results and task ids are kept (default 86400).",
    )
    result_stream_max_len: int | None = Field(
        default=None, ge=100, description="Most entries kept on the result stream (default 100000)."
    )
    dead_letter_max_len: int | None = Field(
        default=None,
        ge=10,
        description="Most entries kept on the dead-letter stream (default 10000).",
    )
    max_payload_bytes: int | None = Field(
        default=None,
        ge=1024,
        le=64 * MIB,
        description=f"Largest task envelope accepted, in bytes (default {MIB}).",
    )
    max_clock_skew_seconds: float | None = Field(
        default=None,
        gt=0,
        description="A signed message dated further in the future than this is refused "
        "(default 300).",
    )

    @model_validator(mode="after")
    def _cross_field_rules(self) -> Self:
        # The same rules as the CEL above, for objects that never passed the API server.
        renew = self.lease_renew_seconds or DEFAULT_LEASE_RENEW_SECONDS
        claim = self.claim_idle_seconds or DEFAULT_CLAIM_IDLE_SECONDS
        if renew * 2 > claim:
            raise ValueError(RENEW_WITHIN_CLAIM_MESSAGE)
        base = self.retry_base_seconds or DEFAULT_RETRY_BASE_SECONDS
        if base > (self.retry_max_seconds or DEFAULT_RETRY_MAX_SECONDS):
            raise ValueError(RETRY_BASE_WITHIN_MAX_MESSAGE)
        return self


class PriorityBacklog(KubeModel):
    """The backlog of one priority's task stream."""

    priority: str = Field(description="high, normal or low.")
    waiting: int = Field(default=0, ge=0, description="Tasks not yet delivered to any agent.")
    inflight: int = Field(
        default=0, ge=0, description="Tasks delivered to an agent and not yet finished."
    )
    oldest_waiting_seconds: int | None = Field(
        default=None, ge=0, description="How long the oldest waiting task has waited."
    )


class Backlog(KubeModel):
    """The fleet's tasks that are not finished, as Redis showed them at the last reconcile."""

    waiting: int = Field(
        default=0, ge=0, description="Tasks not yet delivered to any agent, all priorities."
    )
    inflight: int = Field(
        default=0, ge=0, description="Tasks delivered to an agent and not yet finished."
    )
    retrying: int = Field(default=0, ge=0, description="Failed tasks waiting for their retry.")
    oldest_waiting_seconds: int | None = Field(
        default=None,
        ge=0,
        description="How long the oldest waiting task has waited (unset when none waits).",
    )
    by_priority: list[PriorityBacklog] = Field(
        default_factory=list,
        description="The same, per priority (highest first).",
        json_schema_extra={
            "x-kubernetes-list-type": "map",
            "x-kubernetes-list-map-keys": ["priority"],
        },
    )
