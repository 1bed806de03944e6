"""The services a fleet's agents use, and the keys they use them with.

Each is an optional override of the operator's defaults that points at Secrets, so they share the
Secret reference shape and change for the same reasons (a new backend, a key rotation).
"""

from __future__ import annotations

from pydantic import ConfigDict, Field

from newfuse.api.base import CEL, KubeModel, cel
from newfuse.api.podspec import SecretKeyRef


class ModelPrice(KubeModel):
    """What one model's tokens cost, in the currency the fleet's budgets use."""

    model: str = Field(
        min_length=1, max_length=253, description='The model as the gateway names it, or "*".'
    )
    input_per_million_tokens: float = Field(default=0.0, ge=0, description="Prompt tokens.")
    output_per_million_tokens: float = Field(default=0.0, ge=0, description="Completion tokens.")


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
    prices: list[ModelPrice] = Field(
        default_factory=list,
        max_length=64,
        description="Price table: agents report each task's cost by it (cost gate, budgets).",
    )


class RedisSpec(KubeModel):
    """Which Redis the fleet uses. Omitted: the operator's own Redis."""

    url_secret_ref: SecretKeyRef | None = Field(
        default=None,
        description=(
            "Secret key holding a redis:// or rediss:// URL (ACL user and password go in it: "
            "rediss://user:password@host:6380/0); redis+cluster:// or rediss+cluster:// names a "
            "Redis Cluster by any one of its nodes."
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
