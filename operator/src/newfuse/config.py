"""Operator settings, read once from the environment (the chart sets them; so do the tests)."""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from enum import StrEnum
from typing import Final

from pydantic import BaseModel, ConfigDict, Field, SecretStr, ValidationError, model_validator

from newfuse.adapters.redis_connect import has_password
from newfuse.api.v1alpha1 import SecretKeyRef
from newfuse.tracing import TraceExporter


class LogFormat(StrEnum):
    """How log lines are written."""

    JSON = "json"
    TEXT = "text"


# "<secret name>/<key>": a DNS-1123 name, then a Secret data key.
NAME_SLASH_KEY_PATTERN: Final = r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?/[-._a-zA-Z0-9]+$"
# The README's configuration table documents this default (a unit test compares the two).
DEFAULT_REDIS_CLEANUP_TIMEOUT_SECONDS: Final = 120.0


def env_problems(exc: ValidationError, variable: Callable[[str], str]) -> str:
    """What is wrong with a configuration, each problem named by its environment ``variable``."""
    return "; ".join(
        f"{variable(str(e['loc'][0]))}: {e['msg']}" if e["loc"] else e["msg"] for e in exc.errors()
    )


def secret_key_ref(value: str | None) -> SecretKeyRef | None:
    """The SecretKeyRef that "<secret>/<key>" names."""
    if not value:
        return None
    name, key = value.split("/", 1)
    return SecretKeyRef(name=name, key=key)


class OperatorConfig(BaseModel):
    """Everything the operator process can be told. Env: NEWFUSE_<FIELD_NAME_UPPERCASE>."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    namespaces: tuple[str, ...] = Field(
        default=(), description="Namespaces to watch (comma-separated); empty means all."
    )
    kubeconfig: str | None = Field(default=None, description="Kubeconfig path; default in-cluster.")
    redis_url: str = Field(default="redis://127.0.0.1:6379/0", description="The operator's Redis.")
    agent_redis_url: str | None = Field(
        default=None,
        description="Redis URL given to agent pods when spec.redis is unset (default: redis_url).",
    )
    redis_timeout_seconds: float = Field(default=2.0, gt=0)
    redis_backoff_seconds: float = Field(
        default=5.0,
        gt=0,
        description=(
            "After a Redis call fails to reach Redis, skip Redis for this long (status says "
            "RedisConnected=False), then probe it again."
        ),
    )
    redis_cleanup_timeout_seconds: float = Field(
        default=DEFAULT_REDIS_CLEANUP_TIMEOUT_SECONDS,
        gt=0,
        description=(
            "How long a deleted fleet's finalizer waits for Redis (and for the fleet's pods to "
            "go) before it lets the fleet go without removing its Redis keys."
        ),
    )
    gateway_url: str | None = Field(
        default=None,
        description="The fleet API gateway's URL as clients reach it; each fleet's A2A endpoint "
        "under it goes into status.endpoints.a2a (the chart sets it when it deploys the gateway).",
    )
    redis_ca_file: str | None = Field(
        default=None,
        description="PEM CA bundle verifying a rediss:// server (the chart mounts it).",
    )
    per_fleet_keys: bool = Field(
        default=False,
        description=(
            "Give each fleet without spec.signing.keySecretRef a signing key of its own, in a "
            "Secret the fleet owns (<fleet>-newfuse-signing), instead of the operator's key."
        ),
    )
    manage_redis_users: bool = Field(
        default=False,
        description=(
            "Create a Redis ACL user per fleet, confined to its keys and channels, with its URL "
            "in a Secret the fleet owns (needs a Redis connection allowed ACL SETUSER)."
        ),
    )
    agent_redis_secret: str | None = Field(
        default=None,
        pattern=NAME_SLASH_KEY_PATTERN,
        description=(
            "<secret>/<key> in each fleet's namespace holding the agents' Redis URL "
            "(for fleets without spec.redis); required when that URL has a password."
        ),
    )
    signing_key: SecretStr | None = Field(
        default=None, description="Signs the operator's messages to agents (drain notices)."
    )
    signing_secret: str | None = Field(
        default=None,
        pattern=NAME_SLASH_KEY_PATTERN,
        description=(
            "<secret>/<key> in signing_secret_namespace: when signing_key is unset, the operator "
            "reads its key there, creating the Secret with a random key if it does not exist."
        ),
    )
    signing_secret_namespace: str | None = Field(
        default=None, description="Namespace of signing_secret (the chart: the operator's own)."
    )
    agent_signing_secret: str | None = Field(
        default=None,
        pattern=NAME_SLASH_KEY_PATTERN,
        description=(
            "<secret>/<key> in each fleet's namespace holding the agents' signing key "
            "(for fleets without spec.signing)."
        ),
    )
    workers: int = Field(default=16, ge=1, le=256, description="Fleets reconciled concurrently.")
    api_threads: int = Field(default=32, ge=1, le=512, description="Threads for API calls.")
    resync_seconds: float = Field(
        default=15.0, gt=0, description="Re-reconcile every fleet this often."
    )
    resync_max_per_second: float = Field(
        default=100.0,
        gt=0,
        description="At most this many resyncs a second: past resync_seconds x this many fleets, "
        "the period stretches (core/resync.py).",
    )
    heartbeat_timeout_seconds: float = Field(
        default=30.0, gt=0, description="An agent silent this long is stale."
    )
    agent_heartbeat_seconds: float = Field(default=5.0, gt=0)
    metrics_address: str = Field(default="127.0.0.1", description="Bind address of /metrics.")
    metrics_port: int = Field(
        default=8080, ge=0, le=65535, description="Port of /metrics (0: off)."
    )
    health_endpoint: str | None = Field(
        default="http://127.0.0.1:8081/healthz", description="kopf liveness endpoint URL."
    )
    log_format: LogFormat = LogFormat.JSON
    log_level: str = "INFO"
    trace_exporter: TraceExporter = TraceExporter.NONE
    leader_election: bool = Field(
        default=False,
        description="Reconcile only while holding a Lease (the chart turns it on).",
    )
    leader_election_namespace: str = Field(
        default="default", description="Namespace of the leader Lease (the chart: its own)."
    )
    leader_election_name: str = Field(
        default="newfuse-operator", description="Name of the leader Lease."
    )
    pod_name: str | None = Field(
        default=None, description="This replica's pod name, the base of its election identity."
    )
    lease_duration_seconds: float = Field(default=15.0, gt=0)
    renew_deadline_seconds: float = Field(default=10.0, gt=0)
    retry_period_seconds: float = Field(default=2.0, gt=0)

    @model_validator(mode="after")
    def _no_credentials_in_plain_agent_env(self) -> OperatorConfig:
        if has_password(self.effective_agent_redis_url) and not self.agent_redis_secret:
            raise ValueError(
                "the agents' Redis URL carries a password, which would be put in every agent "
                "pod as a plain env value: set NEWFUSE_AGENT_REDIS_SECRET=<secret>/<key> (a "
                "Secret in each fleet namespace) or NEWFUSE_AGENT_REDIS_URL without credentials"
            )
        return self

    @model_validator(mode="after")
    def _signing_secret_has_a_namespace(self) -> OperatorConfig:
        if self.signing_secret and not self.signing_secret_namespace:
            raise ValueError("NEWFUSE_SIGNING_SECRET needs NEWFUSE_SIGNING_SECRET_NAMESPACE")
        return self

    @model_validator(mode="after")
    def _election_timings_are_safe(self) -> OperatorConfig:
        if not (
            self.retry_period_seconds < self.renew_deadline_seconds < self.lease_duration_seconds
        ):
            raise ValueError(
                "NEWFUSE_RETRY_PERIOD_SECONDS < NEWFUSE_RENEW_DEADLINE_SECONDS < "
                "NEWFUSE_LEASE_DURATION_SECONDS is required, or two replicas could both lead"
            )
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> OperatorConfig:
        """Read NEWFUSE_* variables; raise ValueError naming the variable on bad input."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for name in cls.model_fields:
            raw = env.get(f"NEWFUSE_{name.upper()}")
            if raw is None:
                continue
            values[name] = (
                tuple(p.strip() for p in raw.split(",") if p.strip())
                if name == "namespaces"
                else raw
            )
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            named = env_problems(exc, lambda field: f"NEWFUSE_{field.upper()}")
            raise ValueError(f"invalid operator configuration: {named}") from exc

    @property
    def signing_key_bytes(self) -> bytes | None:
        """The signing key as the envelope code takes it (None: messages go unsigned)."""
        return self.signing_key.get_secret_value().encode() if self.signing_key else None

    @property
    def effective_agent_redis_url(self) -> str:
        """The Redis URL agents get by default."""
        return self.agent_redis_url or self.redis_url
