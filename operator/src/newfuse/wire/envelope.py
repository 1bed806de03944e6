"""The A2A message envelope: `{type, payload, metadata{timestamp, sender, protocol_version, ...}}`.

Every message on every channel is one envelope. Decoding is strict and never raises anything
but MessageRejectedError, whose `reason` is a RejectReason: agents dead-letter and count bad input
by that reason instead of crashing. Signatures (newfuse.wire.signing) cover the canonical bytes of
type, payload and metadata (minus the signature), and the metadata names the audience (namespace,
fleet, channel) and the key id: a forged, altered or misaddressed message is refused; freshness
and message-id checks (done by the receiver, which owns the replay cache) refuse replays.

Encoding is on the hot path of every task, so it uses orjson on plain dicts; decoding parses with
orjson and validates with pydantic (its Rust core), which is also what makes it total.
"""

from __future__ import annotations

import datetime as dt
import os
from enum import StrEnum
from typing import Any, Final, TypeVar

import orjson
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from newfuse.wire.signing import (
    KID_PATTERN,
    SIGNATURE_PATTERN,
    Audience,
    CanonicalFormError,
    Channel,
    Keyring,
    Signer,
    canonical_bytes,
)

PROTOCOL_VERSION: Final = "1.0"
# 2.0 is wire-identical to 1.0 today: the major exists so a fleet can run a major-version migration
# (stable speaks both, the canary only the new one) through the rollout's protocol gate before a
# breaking change ships. Which majors an agent takes is its own choice (newfuse.wire.protocol).
SUPPORTED_MAJOR_VERSIONS: Final = frozenset({1, 2})
# A message stamped further ahead than this is refused (a broken clock, or a forgery); a signed
# system message older than this is refused as a possible replay. Tasks are not aged by it: a
# task's age is bounded by its own deadline (see newfuse.core.tasklife).
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
    UNKNOWN_KEY = "unknown_key"
    WRONG_AUDIENCE = "wrong_audience"
    CANNOT_UNSEAL = "cannot_unseal"
    WRONG_TASK = "wrong_task"  # a stored result that names another task
    STALE = "stale"
    FUTURE_TIMESTAMP = "future_timestamp"
    REPLAYED = "replayed"
    UNKNOWN_HANDLER = "unknown_handler"
    OVERSIZE = "oversize"


# Refusals that say the message may not be what its sender sent, or not from a sender at all: a
# requeue would re-sign it with the requeuer's key and launder it into a valid task.
SECURITY_REJECTIONS: Final = frozenset(
    {
        RejectReason.UNSIGNED,
        RejectReason.BAD_SIGNATURE,
        RejectReason.UNKNOWN_KEY,
        RejectReason.WRONG_AUDIENCE,
        RejectReason.REPLAYED,
        RejectReason.FUTURE_TIMESTAMP,
    }
)


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
    # Every field is bounded: a hostile value must fail validation, not a later step (a 5,000-digit
    # version used to crash int(), a non-ASCII signature hmac.compare_digest).
    sender: str = Field(min_length=1, max_length=253)
    protocol_version: str = Field(max_length=19, pattern=r"^[0-9]{1,9}\.[0-9]{1,9}$")
    message_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    traceparent: str | None = Field(default=None, max_length=128)
    # The audience: absent on an unsigned message from an older sender, required on a signed one.
    namespace: str | None = Field(default=None, min_length=1, max_length=63)
    fleet: str | None = Field(default=None, min_length=1, max_length=253)
    channel: Channel | None = None
    kid: str | None = Field(default=None, max_length=80, pattern=KID_PATTERN)
    signature: str | None = Field(default=None, pattern=SIGNATURE_PATTERN)


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


def encode(
    type_: MessageType,
    payload: dict[str, Any],
    sender: str,
    *,
    now: dt.datetime,
    audience: Audience | None = None,
    signer: Signer | None = None,
    message_id: str | None = None,
    traceparent: str | None = None,
    protocol_version: str = PROTOCOL_VERSION,
) -> bytes:
    """Serialise one envelope for ``audience``, signed when ``signer`` is given."""
    metadata: dict[str, Any] = {
        "timestamp": now.isoformat(),
        "sender": sender,
        "protocol_version": protocol_version,
        # As random as uuid4().hex, for a quarter of its cost.
        "message_id": message_id or os.urandom(16).hex(),
    }
    if traceparent:
        metadata["traceparent"] = traceparent
    if audience is not None:
        metadata.update(audience.fields())
    if signer is not None:
        if audience is None:
            raise ValueError("a signed message must name its audience")
        metadata["kid"] = signer.kid
        metadata["signature"] = signer.sign(canonical_bytes(type_.value, payload, metadata))
    return orjson.dumps({"type": type_.value, "payload": payload, "metadata": metadata})


def decode(
    raw: bytes | str,
    *,
    keyring: Keyring | None = None,
    audience: Audience | None = None,
    require_signature: bool = False,
    now: dt.datetime,
    max_skew: dt.timedelta = MAX_CLOCK_SKEW,
    max_age: dt.timedelta | None = MAX_CLOCK_SKEW,
) -> Envelope:
    """Parse and check one envelope; raise MessageRejectedError on anything wrong.

    Checks, in order: JSON, envelope shape, protocol major version, a timestamp no further ahead
    than ``max_skew``, that the message is addressed to ``audience`` (if given), then (if a
    ``keyring`` is given) the key id and signature and, for a signed message, an age of at most
    ``max_age`` (None: any age). Message-id replay checks are the caller's.
    """
    try:
        return _decode(
            raw,
            keyring,
            audience,
            require_signature=require_signature,
            now=now,
            max_skew=max_skew,
            max_age=max_age,
        )
    except MessageRejectedError:
        raise
    except Exception as exc:  # total by contract: no input may crash a listener
        raise MessageRejectedError(
            RejectReason.INVALID_ENVELOPE, f"undecodable ({type(exc).__name__})"
        ) from None


def _parse(raw: bytes | str) -> tuple[dict[str, Any], Envelope]:
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
    return data, envelope


def _check_audience(metadata: Metadata, audience: Audience) -> None:
    named = (metadata.namespace, metadata.fleet, metadata.channel)
    if named == (None, None, None) and metadata.signature is None:
        return  # an unsigned message of an older sender: whether to take it is require_signature's
    if named != (audience.namespace, audience.fleet, audience.channel):
        where = "/".join(str(part) for part in named)
        raise MessageRejectedError(
            RejectReason.WRONG_AUDIENCE,
            f"addressed to {where}, not to {audience.namespace}/{audience.fleet}/"
            f"{audience.channel}",
        )


def _decode(
    raw: bytes | str,
    keyring: Keyring | None,
    audience: Audience | None,
    *,
    require_signature: bool,
    now: dt.datetime,
    max_skew: dt.timedelta,
    max_age: dt.timedelta | None,
) -> Envelope:
    data, envelope = _parse(raw)
    metadata = envelope.metadata
    timestamp = metadata.timestamp
    if timestamp.tzinfo is None:
        timestamp = timestamp.replace(tzinfo=dt.UTC)
    if timestamp - now > max_skew:
        raise MessageRejectedError(
            RejectReason.FUTURE_TIMESTAMP,
            f"timestamp {timestamp.isoformat()} is more than {max_skew} ahead of this clock",
        )
    if audience is not None:
        _check_audience(metadata, audience)
    if keyring is None:
        return envelope
    if metadata.signature is None:
        if require_signature:
            raise MessageRejectedError(
                RejectReason.UNSIGNED, "signing is required and the message has no signature"
            )
        return envelope
    if metadata.kid not in keyring:
        raise MessageRejectedError(
            RejectReason.UNKNOWN_KEY, f"key id {metadata.kid!r} is not among the accepted keys"
        )
    try:
        canonical = canonical_bytes(data["type"], data["payload"], data["metadata"])
    except CanonicalFormError as exc:
        raise MessageRejectedError(RejectReason.INVALID_PAYLOAD, str(exc)) from None
    if not keyring.verify(str(metadata.kid), canonical, metadata.signature):
        raise MessageRejectedError(
            RejectReason.BAD_SIGNATURE, "the signature does not match the message"
        )
    if max_age is not None and now - timestamp > max_age:
        raise MessageRejectedError(
            RejectReason.STALE, f"timestamp {timestamp.isoformat()} is older than {max_age}"
        )
    return envelope
