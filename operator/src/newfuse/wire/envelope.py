"""The A2A message envelope: `{type, payload, metadata{timestamp, sender, protocol_version, ...}}`.

Every message on every channel is one envelope. Decoding is strict and never raises anything
but MessageRejectedError, whose `reason` is a RejectReason: agents dead-letter and count bad input
by that reason instead of crashing. Optional HMAC-SHA256 signatures cover the canonical bytes of
type, payload and metadata (minus the signature), so a forged or altered message is refused;
freshness and message-id checks (done by the receiver, which owns the replay cache) refuse replays.

Encoding is on the hot path of every task, so it uses orjson on plain dicts; decoding parses with
orjson and validates with pydantic (its Rust core), which is also what makes it total.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import uuid
from enum import StrEnum
from typing import Any, Final, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

PROTOCOL_VERSION: Final = "1.0"
SUPPORTED_MAJOR_VERSIONS: Final = frozenset({1})
# A signed message older (or newer) than this is refused as a possible replay.
MAX_CLOCK_SKEW: Final = dt.timedelta(minutes=5)


class MessageType(StrEnum):
    """What an envelope carries."""

    TASK = "task"
    RESULT = "result"
    DRAIN = "drain"
    RELOAD = "reload"
    PING = "ping"
    PONG = "pong"


class RejectReason(StrEnum):
    """Why a message was refused (a Prometheus label and the dead letter's reason)."""

    MALFORMED_JSON = "malformed_json"
    INVALID_ENVELOPE = "invalid_envelope"
    INVALID_PAYLOAD = "invalid_payload"
    UNSUPPORTED_VERSION = "unsupported_version"
    UNSIGNED = "unsigned"
    BAD_SIGNATURE = "bad_signature"
    STALE = "stale"
    REPLAYED = "replayed"
    UNKNOWN_HANDLER = "unknown_handler"


class MessageRejectedError(ValueError):
    """A message that must not be processed, with a machine-readable reason."""

    def __init__(self, reason: RejectReason, detail: str) -> None:
        """Refuse for ``reason``; ``detail`` says what exactly was wrong."""
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class Metadata(BaseModel):
    """Who sent a message, when, in which protocol version, and its trace context."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    timestamp: dt.datetime
    sender: str = Field(min_length=1, max_length=253)
    protocol_version: str = Field(pattern=r"^[0-9]+\.[0-9]+$")
    message_id: str = Field(min_length=1, max_length=128)
    traceparent: str | None = Field(default=None, max_length=128)
    signature: str | None = Field(default=None, max_length=128)


class Envelope(BaseModel):
    """One A2A message."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    type: MessageType
    payload: dict[str, Any]
    metadata: Metadata


M = TypeVar("M", bound=BaseModel)


def validate(model: type[M], data: Any, reason: RejectReason, prefix: str = "") -> M:
    """Parse ``data`` as ``model``, or refuse it for ``reason`` naming the first bad field."""
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise MessageRejectedError(reason, f"{prefix}{where}: {first['msg']}") from None


def _canonical(type_: str, payload: dict[str, Any], metadata: dict[str, Any]) -> bytes:
    unsigned = {k: v for k, v in metadata.items() if k != "signature" and v is not None}
    return orjson.dumps(
        {"type": type_, "payload": payload, "metadata": unsigned}, option=orjson.OPT_SORT_KEYS
    )


def sign_bytes(key: bytes, canonical: bytes) -> str:
    """HMAC-SHA256 of ``canonical`` as hex."""
    return hmac.new(key, canonical, hashlib.sha256).hexdigest()


def encode(
    type_: MessageType,
    payload: dict[str, Any],
    sender: str,
    *,
    now: dt.datetime,
    key: bytes | None = None,
    message_id: str | None = None,
    traceparent: str | None = None,
    protocol_version: str = PROTOCOL_VERSION,
) -> bytes:
    """Serialise one envelope, signed when ``key`` is given."""
    metadata: dict[str, Any] = {
        "timestamp": now.isoformat(),
        "sender": sender,
        "protocol_version": protocol_version,
        "message_id": message_id or uuid.uuid4().hex,
    }
    if traceparent:
        metadata["traceparent"] = traceparent
    if key is not None:
        metadata["signature"] = sign_bytes(key, _canonical(type_.value, payload, metadata))
    return orjson.dumps({"type": type_.value, "payload": payload, "metadata": metadata})


def decode(
    raw: bytes | str, *, key: bytes | None = None, require_signature: bool = False, now: dt.datetime
) -> Envelope:
    """Parse and check one envelope; raise MessageRejectedError on anything wrong.

    Checks, in order: JSON, envelope shape, protocol major version, then (if ``key`` is given)
    the signature and the timestamp's freshness. Message-id replay checks are the caller's.
    """
    try:
        data = orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        raise MessageRejectedError(RejectReason.MALFORMED_JSON, str(exc)) from None
    if not isinstance(data, dict):
        raise MessageRejectedError(
            RejectReason.INVALID_ENVELOPE, f"expected an object, got {type(data).__name__}"
        )
    envelope = validate(Envelope, data, RejectReason.INVALID_ENVELOPE)
    major = int(envelope.metadata.protocol_version.split(".", 1)[0])
    if major not in SUPPORTED_MAJOR_VERSIONS:
        supported = ", ".join(f"{m}.x" for m in sorted(SUPPORTED_MAJOR_VERSIONS))
        raise MessageRejectedError(
            RejectReason.UNSUPPORTED_VERSION,
            f"protocol_version {envelope.metadata.protocol_version} is not supported "
            f"(supported: {supported})",
        )
    signature = envelope.metadata.signature
    if key is None:
        return envelope
    if signature is None:
        if require_signature:
            raise MessageRejectedError(
                RejectReason.UNSIGNED, "signing is required and the message has no signature"
            )
        return envelope
    metadata = data["metadata"]
    expected = sign_bytes(key, _canonical(data["type"], data["payload"], metadata))
    if not hmac.compare_digest(expected, signature):
        raise MessageRejectedError(
            RejectReason.BAD_SIGNATURE, "the signature does not match the message"
        )
    timestamp = envelope.metadata.timestamp
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=dt.UTC)
    if abs(now - timestamp) > MAX_CLOCK_SKEW:
        raise MessageRejectedError(
            RejectReason.STALE, f"timestamp {timestamp.isoformat()} is outside ±{MAX_CLOCK_SKEW}"
        )
    return envelope
