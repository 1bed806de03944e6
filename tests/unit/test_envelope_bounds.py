"""The decoder's edges: every bound of the metadata, the clock's skew and age, the audience rule.

A hostile or careless sender lands exactly on a limit sooner or later; each row here sits on one
side of one limit, so a limit moved by one fails a row.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pydantic
import pytest

from newfuse.wire.envelope import (
    MAX_CLOCK_SKEW,
    Envelope,
    MessageRejectedError,
    MessageType,
    RejectReason,
    decode,
    encode,
)
from newfuse.wire.signing import Audience, Channel, Keyring, Signer, canonical_bytes

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
SIGNER = Signer(b"secret")
KEY = Keyring.of([SIGNER])
AUD = Audience("ns", "fleet", Channel.TASKS)
PAYLOAD = {"task_id": "t1", "handler": "echo"}


def unsigned(**metadata: Any) -> bytes:
    """An unsigned task whose metadata fields are overridden (None removes one)."""
    meta: dict[str, Any] = {
        "timestamp": NOW.isoformat(),
        "sender": "cli",
        "protocol_version": "1.0",
        "message_id": "m1",
    }
    meta.update(metadata)
    meta = {k: v for k, v in meta.items() if v is not None}
    return orjson.dumps({"type": "task", "payload": PAYLOAD, "metadata": meta})


def signed_at(when: dt.datetime) -> bytes:
    return encode(MessageType.TASK, PAYLOAD, "cli", now=when, audience=AUD, signer=SIGNER)


def reason_of(raw: bytes, **kw: Any) -> RejectReason | None:
    try:
        decode(raw, now=NOW, **kw)
    except MessageRejectedError as exc:
        return exc.reason
    return None


@pytest.mark.parametrize(
    ("field", "ok", "too_far"),
    [
        ("sender", "s" * 253, "s" * 254),
        ("sender", "s", ""),
        ("message_id", "m" * 128, "m" * 129),
        ("message_id", "m", ""),
        ("traceparent", "t" * 128, "t" * 129),
        ("namespace", "n" * 63, "n" * 64),
        ("namespace", "n", ""),
        ("fleet", "f" * 253, "f" * 254),
        ("fleet", "f", ""),
    ],
)
def test_each_metadata_field_is_bounded(field: str, ok: str, too_far: str) -> None:
    assert reason_of(unsigned(**{field: ok})) is None
    assert reason_of(unsigned(**{field: too_far})) is RejectReason.INVALID_ENVELOPE


def test_a_refusal_names_the_field() -> None:
    with pytest.raises(MessageRejectedError, match="sender"):
        decode(unsigned(sender="s" * 254), now=NOW)


def test_the_default_skew_is_five_minutes_on_the_dot() -> None:
    assert dt.timedelta(minutes=5) == MAX_CLOCK_SKEW
    ahead = NOW + MAX_CLOCK_SKEW
    assert reason_of(unsigned(timestamp=ahead.isoformat())) is None
    late = ahead + dt.timedelta(seconds=1)
    assert reason_of(unsigned(timestamp=late.isoformat())) is RejectReason.FUTURE_TIMESTAMP


def test_a_signed_message_may_be_exactly_as_old_as_the_default_age() -> None:
    assert reason_of(signed_at(NOW - MAX_CLOCK_SKEW), keyring=KEY) is None
    too_old = NOW - MAX_CLOCK_SKEW - dt.timedelta(seconds=1)
    assert reason_of(signed_at(too_old), keyring=KEY) is RejectReason.STALE


@pytest.mark.parametrize(
    "timestamp",
    ["2026-11-21T12:00:00", "2026-11-21T14:00:00+02:00", "2026-11-21T07:00:00-05:00"],
    ids=["naive means UTC", "east of UTC", "west of UTC"],
)
def test_a_timestamp_is_an_instant_whatever_its_offset(timestamp: str) -> None:
    assert reason_of(unsigned(timestamp=timestamp)) is None
    early = dt.datetime.fromisoformat(timestamp) + dt.timedelta(minutes=6)
    assert reason_of(unsigned(timestamp=early.isoformat())) is RejectReason.FUTURE_TIMESTAMP


def test_an_unsigned_message_passes_a_keyring_unless_signatures_are_required() -> None:
    assert reason_of(unsigned(), keyring=KEY) is None
    assert reason_of(unsigned(), keyring=KEY, require_signature=True) is RejectReason.UNSIGNED


def test_only_an_unsigned_message_may_leave_out_its_audience() -> None:
    assert reason_of(unsigned(), audience=AUD) is None  # an older sender
    meta = orjson.loads(unsigned())["metadata"] | {"kid": SIGNER.kid}
    meta["signature"] = SIGNER.sign(canonical_bytes("task", PAYLOAD, meta))
    no_audience = orjson.dumps({"type": "task", "payload": PAYLOAD, "metadata": meta})
    assert reason_of(no_audience, keyring=KEY) is None  # signed over exactly what it says
    assert reason_of(no_audience, audience=AUD, keyring=KEY) is RejectReason.WRONG_AUDIENCE


def test_an_unsigned_message_for_someone_else_is_refused() -> None:
    other = unsigned(namespace="ns", fleet="other", channel="tasks")
    assert reason_of(other, audience=AUD) is RejectReason.WRONG_AUDIENCE
    partial = unsigned(namespace="ns")
    assert reason_of(partial, audience=AUD) is RejectReason.WRONG_AUDIENCE
    mine = unsigned(namespace="ns", fleet="fleet", channel="tasks")
    assert reason_of(mine, audience=AUD) is None


def test_a_decoded_envelope_cannot_be_changed() -> None:
    envelope = decode(signed_at(NOW), keyring=KEY, now=NOW)
    assert isinstance(envelope, Envelope)
    with pytest.raises(pydantic.ValidationError):
        envelope.type = MessageType.DRAIN
    with pytest.raises(pydantic.ValidationError):
        envelope.metadata.sender = "someone else"
