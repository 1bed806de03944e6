"""The pure translation between A2A v1.0 and a fleet's tasks: cards, messages, task states.

Kept apart from the request handler so that every rule below is table-tested without a server:
which skill a message asks for, what input the handler gets, which task id a message id becomes
(idempotency), and how a stored result reads as an A2A Task.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Sequence
from typing import Any, Final

from a2a.types.a2a_pb2 import (
    AgentCapabilities,
    AgentCard,
    AgentInterface,
    AgentProvider,
    AgentSkill,
    Artifact,
    HTTPAuthSecurityScheme,
    Message,
    Part,
    Role,
    SecurityRequirement,
    SecurityScheme,
    StringList,
    Task,
    TaskPushNotificationConfig,
    TaskState,
    TaskStatus,
)
from a2a.utils.constants import PROTOCOL_VERSION_1_0
from a2a.utils.errors import InvalidParamsError
from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.struct_pb2 import Value
from google.protobuf.timestamp_pb2 import Timestamp
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from newfuse.wire.endpoints import RESULT_ARTIFACT, RESULT_METADATA, SKILL_KEY
from newfuse.wire.tasks import FailReason, ResultPayload, ResultStatus

PROTOCOL_BINDING: Final = "JSONRPC"
# The A2A version this gateway speaks (the a2a-sdk's); a fleet's spec.protocolVersion narrows it.
A2A_VERSION: Final = PROTOCOL_VERSION_1_0
BEARER: Final = "bearer"
MAX_PUSH_TARGETS: Final = 10
# A cancelled task is stored as a FAILED result with this reason, so the first result still wins.
CANCELED_REASON: Final = "canceled"
# uuid5 namespace of task ids made from message ids (any fixed UUID works; this one is ours).
_TASK_IDS: Final = uuid.UUID("5f1e3c2a-9b7d-4c1e-8a6f-0e2d4b6c8a10")

TERMINAL: Final = frozenset(
    {TaskState.TASK_STATE_COMPLETED, TaskState.TASK_STATE_FAILED, TaskState.TASK_STATE_CANCELED}
)


class PushTarget(BaseModel):
    """A webhook of a task (the A2A TaskPushNotificationConfig the client set)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, max_length=128)
    url: str = Field(min_length=1, max_length=2048, pattern=r"^https?://")
    token: str = Field(default="", max_length=512)
    scheme: str = Field(default="", max_length=64)
    credentials: str = Field(default="", max_length=4096)


class TaskRecord(BaseModel):
    """What the gateway keeps of an A2A task beside the fleet's own task: its conversation."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    context_id: str = Field(min_length=1, max_length=256)
    skill: str = Field(min_length=1, max_length=64)
    message_id: str = Field(min_length=1, max_length=256)
    created_at: dt.datetime
    # The verified caller who sent it (None: the gateway runs without auth).
    by: str | None = Field(default=None, max_length=512)
    push: list[PushTarget] = Field(default_factory=list, max_length=MAX_PUSH_TARGETS)


def push_config(task_id: str, target: PushTarget) -> TaskPushNotificationConfig:
    """The A2A form of a task's webhook (its credentials are never read back)."""
    config = TaskPushNotificationConfig(id=target.id, task_id=task_id, url=target.url)
    if target.scheme:
        config.authentication.scheme = target.scheme
    return config


def push_target(config: TaskPushNotificationConfig) -> PushTarget:
    """A client's webhook, checked (InvalidParamsError naming the field otherwise)."""
    try:
        return PushTarget(
            id=config.id or uuid.uuid4().hex,
            url=config.url,
            token=config.token,
            scheme=config.authentication.scheme,
            credentials=config.authentication.credentials,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise InvalidParamsError(f"pushNotificationConfig.{where}: {first['msg']}") from None


def agent_card(
    namespace: str,
    fleet: str,
    capabilities: Sequence[str],
    url: str,
    version: str,
    *,
    bearer: bool = False,
    protocol_version: str = A2A_VERSION,
) -> AgentCard:
    """The Agent Card of a fleet: one skill per capability, reached over JSON-RPC at ``url``.

    ``bearer``: callers must send a bearer JWT (the card says so, as a security scheme).
    """
    card = AgentCard(
        name=fleet,
        description=f"NewFuse fleet {namespace}/{fleet}: {', '.join(capabilities) or 'no skills'}",
        version=version,
        provider=AgentProvider(organization="NewFuse", url="https://github.com/newfuse"),
        supported_interfaces=[
            AgentInterface(
                url=url, protocol_binding=PROTOCOL_BINDING, protocol_version=protocol_version
            )
        ],
        capabilities=AgentCapabilities(streaming=True, push_notifications=True),
        default_input_modes=["text/plain", "application/json"],
        default_output_modes=["text/plain", "application/json"],
        skills=[
            AgentSkill(
                id=name, name=name, description=f"The fleet's `{name}` handler.", tags=[name]
            )
            for name in capabilities
        ],
    )
    if bearer:
        card.security_schemes[BEARER].CopyFrom(
            SecurityScheme(
                http_auth_security_scheme=HTTPAuthSecurityScheme(
                    scheme="Bearer",
                    bearer_format="JWT",
                    description="A Kubernetes ServiceAccount token for audience newfuse-gateway, "
                    "or a token of an OIDC issuer the gateway trusts; RBAC on "
                    "newfuseagents/tasks decides.",
                )
            )
        )
        card.security_requirements.append(SecurityRequirement(schemes={BEARER: StringList()}))
    return card


def _major_minor(version: str) -> tuple[int, int] | None:
    major, _, rest = version.strip().partition(".")
    minor = rest.partition(".")[0]
    return (int(major), int(minor)) if major.isdigit() and minor.isdigit() else None


def version_refusal(requested: str | None, fleet_version: str) -> str | None:
    """Why a call asking for A2A ``requested`` cannot reach a fleet that speaks ``fleet_version``.

    None if it can. The spec's rule: the request's major.minor (patch ignored) must be one the
    agent speaks, and a fleet speaks its spec.protocolVersion. Without an A2A-Version header the
    a2a-sdk's own rule applies (the request is taken as 0.3).
    """
    speaks, ours = _major_minor(fleet_version), _major_minor(A2A_VERSION)
    if speaks is None or ours is None or speaks[0] != ours[0] or speaks[1] > ours[1]:
        return (
            f"this fleet's spec.protocolVersion {fleet_version} is not an A2A version this "
            f"gateway speaks ({A2A_VERSION})"
        )
    if requested is None or not requested.strip():
        return None
    if _major_minor(requested) != speaks:
        return (
            f"A2A-Version {requested[:20]!r} is not supported: this fleet speaks A2A "
            f"{fleet_version} (send A2A-Version: {fleet_version})"
        )
    return None


def task_id_for(namespace: str, fleet: str, message_id: str) -> str:
    """The task a message starts: the same message id always names the same task (idempotency)."""
    return uuid.uuid5(_TASK_IDS, f"{namespace}/{fleet}/{message_id}").hex


def skill_of(message: Message, capabilities: Sequence[str]) -> str:
    """The skill the message asks for in its metadata, else the fleet's first one."""
    fields = message.metadata.fields
    if SKILL_KEY in fields:
        asked = fields[SKILL_KEY].string_value
        if asked not in capabilities:
            raise InvalidParamsError(
                f"message.metadata.skill: {asked!r} is not a skill of this agent "
                f"(skills: {', '.join(capabilities) or 'none'})"
            )
        return str(asked)
    if not capabilities:
        raise InvalidParamsError("this agent has no skills yet: its fleet reports no capabilities")
    return capabilities[0]


def task_input(message: Message) -> Any:
    """The handler's input: the text of a text message, the data of one data part, else parts."""
    parts = list(message.parts)
    if not parts:
        raise InvalidParamsError("message.parts: a message needs at least one part")
    if all(part.WhichOneof("content") == "text" for part in parts):
        return "\n".join(part.text for part in parts)
    if len(parts) == 1 and parts[0].HasField("data"):
        return MessageToDict(parts[0].data)
    return [MessageToDict(part) for part in parts]


def output_part(output: Any) -> Part:
    """A handler's output as one part: text for a string, structured data for anything else."""
    if isinstance(output, str):
        return Part(text=output)
    return Part(data=ParseDict(output, Value()), media_type="application/json")


def _timestamp(at: dt.datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


def _agent_text(text: str, task_id: str, context_id: str) -> Message:
    return Message(
        message_id=f"{task_id}-status",
        task_id=task_id,
        context_id=context_id,
        role=Role.ROLE_AGENT,
        parts=[Part(text=text)],
    )


def state_of(result: ResultPayload | None) -> TaskState:
    """The A2A state of a task with this stored result (none yet: submitted)."""
    if result is None:
        return TaskState.TASK_STATE_SUBMITTED
    if result.status is ResultStatus.SUCCEEDED:
        return TaskState.TASK_STATE_COMPLETED
    if result.reason == CANCELED_REASON:
        return TaskState.TASK_STATE_CANCELED
    return TaskState.TASK_STATE_FAILED


def _result_metadata(result: ResultPayload) -> dict[str, Any]:
    values = {
        "agentId": result.agent_id,
        "attempts": result.attempts,
        "latencyMs": result.latency_ms,
        "revision": result.revision,
        "reason": result.reason,
        "finishedAt": result.finished_at.isoformat(),
    }
    return {k: values[k] for k in RESULT_METADATA if values[k] is not None}


def task_of(task_id: str, record: TaskRecord, result: ResultPayload | None) -> Task:
    """The A2A Task of a fleet task: its state, and the output as the `result` artifact."""
    state = state_of(result)
    status = TaskStatus(state=state, timestamp=_timestamp(record.created_at))
    task = Task(id=task_id, context_id=record.context_id, status=status)
    if result is None:
        return task
    status.timestamp.CopyFrom(_timestamp(result.finished_at))
    task.metadata.update(_result_metadata(result))
    if state == TaskState.TASK_STATE_COMPLETED:
        task.artifacts.append(
            Artifact(
                artifact_id=RESULT_ARTIFACT,
                name=RESULT_ARTIFACT,
                parts=[output_part(result.output)],
            )
        )
    else:
        why = result.reason or FailReason.HANDLER_FAILED
        detail = f"{why}: {result.error}" if result.error else str(why)
        status.message.CopyFrom(_agent_text(detail, task_id, record.context_id))
    task.status.CopyFrom(status)
    return task
