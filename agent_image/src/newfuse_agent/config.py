"""Agent settings, read from the environment the operator puts in every agent pod."""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from typing import Final, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from newfuse.tracing import TraceExporter
from newfuse.wire.agentenv import AgentEnv
from newfuse.wire.envelope import PROTOCOL_VERSION, SUPPORTED_MAJOR_VERSIONS
from newfuse.wire.memory import DEFAULT_MAX_ITEMS, MemoryModel
from newfuse.wire.protocol import parse_speaks
from newfuse.wire.review import ReviewPolicy
from newfuse.wire.sealing import Sealer
from newfuse.wire.signing import Keyring, Signing
from newfuse.wire.taskpolicy import TaskPolicy

# An HMAC key shorter than this is guessable; the chart generates 48 characters.
MIN_KEY_BYTES: Final = 32

# Env var -> field, for the variables whose names the operator's pod template fixes.
_ENV: Final[dict[str, str]] = {
    AgentEnv.AGENT_ID: "agent_id",
    AgentEnv.NAMESPACE: "namespace",
    AgentEnv.FLEET: "fleet",
    AgentEnv.REVISION: "revision",
    AgentEnv.CAPABILITIES: "capabilities",
    AgentEnv.PROTOCOL_VERSION: "protocol_version",
    AgentEnv.PROTOCOL_SPEAKS: "speaks",
    AgentEnv.CONCURRENCY: "concurrency",
    AgentEnv.HEARTBEAT_SECONDS: "heartbeat_seconds",
    AgentEnv.HTTP_PORT: "http_port",
    AgentEnv.HTTP_ADDRESS: "http_address",
    AgentEnv.REDIS_URL: "redis_url",
    AgentEnv.SIGNING_KEY: "signing_key",
    AgentEnv.SIGNING_ACCEPT: "signing_accept",
    AgentEnv.ENCRYPTION_KEY: "encryption_key",
    AgentEnv.ENCRYPTION_ACCEPT: "encryption_accept",
    AgentEnv.REQUIRE_SIGNATURES: "require_signatures",
    AgentEnv.DRAIN_GRACE_SECONDS: "drain_grace_seconds",
    AgentEnv.LOG_LEVEL: "log_level",
    AgentEnv.FAULT_RATE: "fault_rate",
    AgentEnv.ECHO_CASE: "echo_case",
    AgentEnv.TRACE_EXPORTER: "trace_exporter",
    AgentEnv.REDIS_CA_FILE: "redis_ca_file",
    AgentEnv.REVIEW_POLICY: "review",
    AgentEnv.MEMORY_MODEL: "memory_model",
    AgentEnv.MEMORY_MAX_ITEMS: "memory_max_items",
    AgentEnv.MEMORY_TTL_SECONDS: "memory_ttl_seconds",
    AgentEnv.MEMORY_POSTGRES_URL: "memory_postgres_url",
}


class AgentConfig(BaseModel):
    """Everything an agent process is told."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    agent_id: str = Field(min_length=1)
    namespace: str = "default"
    fleet: str = Field(min_length=1)
    revision: str = "dev"
    capabilities: tuple[str, ...] = ()
    protocol_version: str = Field(default=PROTOCOL_VERSION, pattern=r"^[0-9]+\.[0-9]+$")
    # The task majors this agent takes; others are passed on (newfuse.wire.protocol).
    speaks: frozenset[int] = SUPPORTED_MAJOR_VERSIONS
    concurrency: int = Field(default=4, ge=1, le=256)
    heartbeat_seconds: float = Field(default=5.0, gt=0)
    http_port: int = Field(default=8080, ge=0, le=65535)
    http_address: str = "0.0.0.0"  # noqa: S104 - a pod's probes and scrapes come from outside
    redis_url: str = "redis://127.0.0.1:6379/0"
    redis_ca_file: str | None = None
    signing_key: str | None = Field(default=None, repr=False)
    # More keys accepted, never signed with (one per line): a rotation's accept-set.
    signing_accept: str | None = Field(default=None, repr=False)
    # The fleet's data key (spec.encryption): task payloads and results are sealed with it.
    encryption_key: str | None = Field(default=None, repr=False)
    encryption_accept: str | None = Field(default=None, repr=False)
    require_signatures: bool = False
    drain_grace_seconds: float = Field(
        default=25.0, ge=0, description="In-flight time allowed on SIGTERM."
    )
    log_level: str = "INFO"
    fault_rate: float = Field(
        default=0.0,
        ge=0,
        le=1,
        description="Fail this share of tasks on purpose (canary drills, tests).",
    )
    echo_case: Literal["upper"] | None = Field(
        default=None, description="Make echo answer wrongly without failing (gate drills)."
    )
    trace_exporter: TraceExporter = Field(
        default=TraceExporter.NONE,
        description="Where task spans go (otlp: set OTEL_EXPORTER_OTLP_ENDPOINT in spec.env).",
    )
    boot_id: str = Field(default_factory=lambda: uuid.uuid4().hex[:8])
    # Timeouts, liveness, retries, retention and size limits: the fleet's spec.tasks.
    tasks: TaskPolicy = Field(default_factory=TaskPolicy)
    # Which outputs wait for a person, and how long reviews wait: the fleet's spec.review.
    review: ReviewPolicy = Field(default_factory=ReviewPolicy)
    # The fleet's spec.memory: the model its memory should be under, its limit, its default TTL.
    memory_model: MemoryModel = MemoryModel.MINILM
    memory_max_items: int = Field(default=DEFAULT_MAX_ITEMS, ge=1)
    memory_ttl_seconds: float | None = Field(default=None, gt=0)
    # spec.memory.postgres: the fleet role's DSN; unset, the memory is kept in the fleet's Redis.
    memory_postgres_url: str | None = Field(default=None, repr=False)

    @field_validator("speaks", mode="before")
    @classmethod
    def _majors(cls, value: object) -> object:
        return parse_speaks(value) if isinstance(value, str) else value

    @model_validator(mode="after")
    def _speaks_the_protocol(self) -> Self:
        # spec.protocolVersion names a major this image cannot speak: crash-loop with the reason
        # (the fleet turns Degraded) rather than run and dead-letter every message.
        if int(self.protocol_version.split(".", 1)[0]) not in SUPPORTED_MAJOR_VERSIONS:
            spoken = ", ".join(f"{m}.x" for m in sorted(SUPPORTED_MAJOR_VERSIONS))
            raise ValueError(
                f"{AgentEnv.PROTOCOL_VERSION}={self.protocol_version} (spec.protocolVersion) is "
                f"not a protocol this agent image speaks ({spoken})"
            )
        return self

    @model_validator(mode="after")
    def _fail_closed(self) -> Self:
        # Requiring signatures with no usable key must not quietly verify nothing.
        if self.require_signatures and len((self.signing_key or "").encode()) < MIN_KEY_BYTES:
            what = (
                "is not set" if not self.signing_key else f"is shorter than {MIN_KEY_BYTES} bytes"
            )
            raise ValueError(
                f"NEWFUSE_SIGNING_KEY {what}, but NEWFUSE_REQUIRE_SIGNATURES=true: refusing to "
                "start an agent that would accept unverified tasks"
            )
        return self

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> AgentConfig:
        """Read the NEWFUSE_* variables; raise ValueError naming the variable on bad input."""
        env = os.environ if env is None else env
        values: dict[str, object] = {}
        for var, field in _ENV.items():
            raw = env.get(var)
            if raw is None or raw == "":
                continue
            values[field] = (
                tuple(c for c in raw.split(",") if c) if field == "capabilities" else raw
            )
        if "review" in values:
            try:
                values["review"] = json.loads(str(values["review"]))
            except ValueError as exc:
                raise ValueError(f"{AgentEnv.REVIEW_POLICY} is not JSON: {exc}") from None
        values["tasks"] = TaskPolicy.from_env(env)
        try:
            return cls.model_validate(values)
        except ValidationError as exc:
            by_field = {f: v for v, f in _ENV.items()}
            problems = "; ".join(
                f"{by_field.get(str(e['loc'][0]), e['loc'][0])}: {e['msg']}"
                if e["loc"]
                else str(e["ctx"]["error"] if "ctx" in e else e["msg"])
                for e in exc.errors()
            )
            raise ValueError(f"invalid agent configuration: {problems}") from exc

    @property
    def signing(self) -> Signing:
        """The fleet's key as signer, and the accept-set (no key: messages go unsigned)."""
        shared = Signing.shared(self.signing_key.encode() if self.signing_key else None)
        accepted = [k.strip().encode() for k in (self.signing_accept or "").splitlines()]
        if shared.signer is None:
            return shared
        return Signing(shared.signer, Keyring.of([shared.signer, *(k for k in accepted if k)]))

    @property
    def sealer(self) -> Sealer | None:
        """What seals and opens this fleet's payloads (None: they travel in the clear)."""
        if not self.encryption_key:
            return None
        accept = [k.strip().encode() for k in (self.encryption_accept or "").splitlines()]
        return Sealer.of(
            self.namespace, self.fleet, self.encryption_key.encode(), [k for k in accept if k]
        )

    @property
    def consumer(self) -> str:
        """This process's consumer name: unique per incarnation of the pod."""
        return f"{self.agent_id}:{self.boot_id}"
