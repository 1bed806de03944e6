"""A fleet's task policy: timeouts, liveness, retries, retention and size limits.

The operator writes it into every agent pod as environment variables (from `spec.tasks` of the
NewFuseAgent) and the agent reads it back; this module is the one home of those variable names, so
the two sides can never disagree about them (a round-trip test holds them together).

The defaults are chosen for agent work, not for echo tasks: a model call takes 30 to 120 s and a
multi-step agent minutes, so a task may run for 10 minutes by default; a worker proves it is alive
by renewing its claim every `lease_renew_seconds`, and only entries whose owner stopped renewing for
`claim_idle_seconds` are taken over by another agent.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

MIB: Final = 1024 * 1024

# Env var -> field. The only place these names are spelled.
ENV_VARS: Final = {
    "NEWFUSE_TASK_TIMEOUT_SECONDS": "default_timeout_seconds",
    "NEWFUSE_CLAIM_IDLE_SECONDS": "claim_idle_seconds",
    "NEWFUSE_LEASE_RENEW_SECONDS": "lease_renew_seconds",
    "NEWFUSE_RETRY_BASE_SECONDS": "retry_base_seconds",
    "NEWFUSE_RETRY_MAX_SECONDS": "retry_max_seconds",
    "NEWFUSE_RESULT_TTL_SECONDS": "result_ttl_seconds",
    "NEWFUSE_RESULT_STREAM_MAX": "result_stream_max",
    "NEWFUSE_DEAD_LETTER_MAX": "dead_letter_max",
    "NEWFUSE_MAX_PAYLOAD_BYTES": "max_payload_bytes",
    "NEWFUSE_MAX_CLOCK_SKEW_SECONDS": "max_clock_skew_seconds",
}


class TaskPolicy(BaseModel):
    """How a fleet's tasks are run, retried, kept and bounded."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    default_timeout_seconds: float = Field(
        default=600.0, gt=0, le=86400, description="Timeout of a task that sets none."
    )
    claim_idle_seconds: float = Field(
        default=30.0,
        gt=0,
        description="An entry whose owner has not renewed its claim for this long is reclaimed.",
    )
    lease_renew_seconds: float = Field(
        default=10.0, gt=0, description="How often a worker renews the claims of its work."
    )
    retry_base_seconds: float = Field(
        default=2.0, gt=0, description="First retry delay; doubles per attempt, with jitter."
    )
    retry_max_seconds: float = Field(default=300.0, gt=0, description="Cap of one retry delay.")
    result_ttl_seconds: float = Field(
        default=86400.0, gt=0, description="How long results and idempotency ids are kept."
    )
    result_stream_max: int = Field(
        default=100_000, ge=100, description="Most entries kept on the result stream."
    )
    dead_letter_max: int = Field(
        default=10_000, ge=10, description="Most entries kept on the dead-letter stream."
    )
    max_payload_bytes: int = Field(
        default=MIB, ge=1024, le=64 * MIB, description="Largest task envelope accepted."
    )
    max_clock_skew_seconds: float = Field(
        default=300.0, gt=0, description="A message from further in the future is refused."
    )

    @model_validator(mode="after")
    def _renew_within_claim(self) -> Self:
        # Two renewals must fit in one claim bound, or a live worker loses work to a GC pause.
        if self.lease_renew_seconds * 2 > self.claim_idle_seconds:
            raise ValueError(
                f"lease_renew_seconds ({self.lease_renew_seconds:g}) must be at most half of "
                f"claim_idle_seconds ({self.claim_idle_seconds:g})"
            )
        if self.retry_base_seconds > self.retry_max_seconds:
            raise ValueError("retry_base_seconds must not exceed retry_max_seconds")
        return self

    @property
    def claim_bound_seconds(self) -> float:
        """Longest time a dead worker's entry waits before another agent takes it over.

        The claim goes idle, then the next reclaim pass (every lease_renew_seconds) finds it.
        """
        return self.claim_idle_seconds + self.lease_renew_seconds

    def to_env(self) -> dict[str, str]:
        """The variables that carry this policy (every one, so an agent never guesses)."""
        values = self.model_dump()
        return {
            var: f"{values[field]:g}" if isinstance(values[field], float) else str(values[field])
            for var, field in ENV_VARS.items()
        }

    @classmethod
    def from_env(cls, env: Mapping[str, str]) -> TaskPolicy:
        """Read the policy; unset variables take the defaults. ValueError names a bad variable."""
        values = {field: env[var] for var, field in ENV_VARS.items() if env.get(var)}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            by_field = {f: v for v, f in ENV_VARS.items()}
            problems = "; ".join(
                f"{by_field.get(str(e['loc'][0]), 'task policy') if e['loc'] else 'task policy'}"
                f": {e['msg']}"
                for e in exc.errors()
            )
            raise ValueError(f"invalid task policy: {problems}") from exc
