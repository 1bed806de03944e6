"""Gateway settings, read once from the environment (the chart sets them; so do the tests).

Each field is read from `NEWFUSE_GATEWAY_<FIELD>`, except the ones the operator and the CLI share
(`SHARED`), which keep the names they have there, so one Secret serves all three.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from enum import StrEnum
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, Json, SecretStr, ValidationError

from newfuse.config import env_problems


class Auth(StrEnum):
    """How callers prove who they are."""

    KUBERNETES = "kubernetes"  # bearer JWTs (ServiceAccount or configured OIDC), RBAC decides
    NONE = "none"  # anybody who reaches the gateway may do anything: for local tests only


class OidcIssuerConfig(BaseModel):
    """An OIDC issuer whose tokens the gateway takes (NEWFUSE_GATEWAY_OIDC_ISSUERS: a JSON list)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    issuer: str = Field(min_length=1)
    audience: str = Field(min_length=1)
    jwks_uri: str | None = Field(
        default=None, description="Default: <issuer>/.well-known/jwks.json"
    )
    username_claim: str = "sub"
    groups_claim: str = "groups"
    prefix: str = Field(default="oidc:", description="Put before usernames and groups for RBAC.")


# Fields read from the variable the operator and the CLI use for the same thing.
SHARED: Final = {
    "kubeconfig": "NEWFUSE_KUBECONFIG",
    "redis_url": "NEWFUSE_REDIS_URL",
    "redis_ca_file": "NEWFUSE_REDIS_CA_FILE",
    "signing_key": "NEWFUSE_SIGNING_KEY",
    "encryption_key": "NEWFUSE_ENCRYPTION_KEY",
}


def env_var(field: str) -> str:
    """The environment variable of a GatewayConfig field."""
    return SHARED.get(field, f"NEWFUSE_GATEWAY_{field.upper()}")


class GatewayConfig(BaseModel):
    """Everything the gateway process can be told."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    host: str = Field(default="0.0.0.0", description="Address to listen on.")  # noqa: S104
    port: int = Field(default=8080, ge=1, le=65535, description="Port to listen on.")
    public_url: str | None = Field(
        default=None,
        description="The URL clients reach the gateway at (Agent Cards name it); default: the "
        "URL of each request.",
    )
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="The fleets' Redis.")
    redis_ca_file: str | None = Field(default=None, description="CA bundle for rediss://.")
    signing_key: SecretStr | None = Field(default=None, description="The fleets' signing key.")
    encryption_key: SecretStr | None = Field(default=None, description="The fleets' sealing key.")
    kubeconfig: str | None = Field(default=None, description="Kubeconfig; default in-cluster.")
    auth: Auth = Field(default=Auth.KUBERNETES, description="How callers authenticate.")
    audience: str = Field(
        default="newfuse-gateway",
        min_length=1,
        description="The audience ServiceAccount tokens must be issued for "
        "(`kubectl create token <sa> --audience newfuse-gateway`).",
    )
    oidc_issuers: Json[list[OidcIssuerConfig]] = Field(
        default_factory=list, description="Other token issuers to trust, as a JSON list."
    )
    decision_cache_seconds: float = Field(
        default=10.0, ge=0, le=300, description="How long an RBAC decision is reused."
    )
    send_wait_seconds: float = Field(
        default=30.0,
        ge=0,
        le=300,
        description="How long a blocking SendMessage waits for the result before it returns the "
        "task still running (the client then polls GetTask or subscribes).",
    )

    push_attempts: int = Field(
        default=5, ge=1, le=20, description="Tries of a webhook before its dead-letter record."
    )
    push_backoff_seconds: float = Field(
        default=1.0, gt=0, le=60, description="The first retry's wait; each next one doubles."
    )
    push_timeout_seconds: float = Field(
        default=10.0, gt=0, le=120, description="How long one webhook call may take."
    )
    push_allow_private: bool = Field(
        default=False,
        description="Let webhooks go to loopback, private and link-local addresses (off: the "
        "a2a-sdk's SSRF screen refuses them, cloud metadata endpoints included).",
    )

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> GatewayConfig:
        """Read the variables; raise ValueError naming the variable on bad input."""
        env = os.environ if env is None else env
        values = {name: env[env_var(name)] for name in cls.model_fields if env_var(name) in env}
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            raise ValueError(
                f"invalid gateway configuration: {env_problems(exc, env_var)}"
            ) from exc

    @staticmethod
    def _bytes(secret: SecretStr | None) -> bytes | None:
        return secret.get_secret_value().encode() if secret else None

    @property
    def signing_key_bytes(self) -> bytes | None:
        """The signing key as the envelope code takes it (None: tasks go unsigned)."""
        return self._bytes(self.signing_key)

    @property
    def encryption_key_bytes(self) -> bytes | None:
        """The sealing key (None: task fields go in the clear)."""
        return self._bytes(self.encryption_key)
