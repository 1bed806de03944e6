"""The A2A envelope: round trips, signatures, versions, and a decoder that refuses cleanly."""

from __future__ import annotations

import datetime as dt

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from newfuse.wire.envelope import (
    MAX_CLOCK_SKEW,
    MessageRejectedError,
    MessageType,
    RejectReason,
    decode,
    encode,
)
from newfuse.wire.signing import Audience, Channel, Keyring, Signer
from newfuse.wire.tasks import TaskPayload

NOW = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
SIGNER = Signer(b"secret")
KEY = Keyring.of([SIGNER])
AUD = Audience("ns", "fleet", Channel.TASKS)


def task(**overrides: object) -> bytes:
    payload = {"task_id": "t1", "handler": "echo", "input": {"x": 1}, **overrides}
    return encode(
        MessageType.TASK,
        payload,
        "cli",
        now=NOW,
        audience=AUD,
        signer=SIGNER,
        traceparent="00-abc-def-01",
    )


def test_round_trip_keeps_everything() -> None:
    envelope = decode(task(), keyring=KEY, require_signature=True, now=NOW)
    assert envelope.type is MessageType.TASK
    assert envelope.metadata.sender == "cli"
    assert envelope.metadata.protocol_version == "1.0"
    assert envelope.metadata.traceparent == "00-abc-def-01"
    assert TaskPayload.model_validate(envelope.payload).input == {"x": 1}


def test_wire_shape_is_the_documented_one() -> None:
    data = orjson.loads(task())
    assert set(data) == {"type", "payload", "metadata"}
    assert set(data["metadata"]) >= {
        "timestamp",
        "sender",
        "protocol_version",
        "message_id",
        "signature",
    }


def _tamper(raw: bytes, path: tuple[str, ...], value: object) -> bytes:
    data = orjson.loads(raw)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    return orjson.dumps(data)


@pytest.mark.parametrize(
    ("raw", "kwargs", "reason"),
    [
        (b"{not json", {}, RejectReason.MALFORMED_JSON),
        (b"[1, 2]", {}, RejectReason.INVALID_ENVELOPE),
        (b'{"type": "task", "payload": {}}', {}, RejectReason.INVALID_ENVELOPE),
        (_tamper(task(), ("type",), "gossip"), {}, RejectReason.INVALID_ENVELOPE),
        (
            _tamper(task(), ("metadata", "protocol_version"), "3.0"),
            {},
            RejectReason.UNSUPPORTED_VERSION,
        ),
        (
            _tamper(task(), ("payload", "input"), {"x": 2}),
            {"keyring": KEY},
            RejectReason.BAD_SIGNATURE,
        ),
        (task(), {"keyring": Keyring({SIGNER.kid: b"other key"})}, RejectReason.BAD_SIGNATURE),
        (task(), {"keyring": Keyring.of([b"other key"])}, RejectReason.UNKNOWN_KEY),
        (
            encode(MessageType.TASK, {}, "cli", now=NOW),
            {"keyring": KEY, "require_signature": True},
            RejectReason.UNSIGNED,
        ),
        (
            task(),
            {"keyring": KEY, "now": NOW + MAX_CLOCK_SKEW + dt.timedelta(seconds=1)},
            RejectReason.STALE,
        ),
    ],
    ids=[
        "bad json",
        "not an object",
        "no metadata",
        "unknown type",
        "major 3",
        "altered payload",
        "wrong key",
        "unknown key id",
        "unsigned",
        "stale",
    ],
)
def test_refusals_carry_a_reason(
    raw: bytes, kwargs: dict[str, object], reason: RejectReason
) -> None:
    options: dict[str, object] = {"now": NOW, **kwargs}
    with pytest.raises(MessageRejectedError) as caught:
        decode(raw, **options)  # type: ignore[arg-type]
    assert caught.value.reason is reason


def test_unsupported_major_names_the_version() -> None:
    with pytest.raises(
        MessageRejectedError,
        match=r"protocol_version 3\.0 is not supported \(supported: 1\.x, 2\.x\)",
    ):
        decode(_tamper(task(), ("metadata", "protocol_version"), "3.0"), now=NOW)


def test_newer_minor_versions_are_accepted() -> None:
    assert (
        decode(
            _tamper(task(), ("metadata", "protocol_version"), "1.7"), now=NOW
        ).metadata.protocol_version
        == "1.7"
    )


def test_unsigned_is_accepted_when_signing_is_optional() -> None:
    raw = encode(MessageType.PING, {}, "cli", now=NOW)
    assert decode(raw, keyring=KEY, require_signature=False, now=NOW).type is MessageType.PING


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300), json_values.map(orjson.dumps)))
def test_decoder_refuses_garbage_with_a_reason_and_nothing_else(raw: bytes) -> None:
    # Random input can never carry a valid signature, so it must always be refused, cleanly.
    with pytest.raises(MessageRejectedError) as caught:
        decode(raw, keyring=KEY, require_signature=True, now=NOW)
    assert caught.value.reason in RejectReason


@settings(max_examples=200, deadline=None)
@given(
    st.sampled_from(["type", "payload", "metadata"]),
    json_values,
)
def test_mutated_valid_envelopes_are_refused_or_accepted_never_crash(
    field: str, value: object
) -> None:
    data = orjson.loads(task())
    data[field] = value
    try:
        decode(orjson.dumps(data), keyring=KEY, require_signature=True, now=NOW)
    except MessageRejectedError:
        return
    # The only way through is an unchanged (still correctly signed) envelope.
    assert orjson.dumps(data) == task() or data[field] == orjson.loads(task())[field]


def _tampered(raw: bytes, **metadata: object) -> bytes:
    data = orjson.loads(raw)
    data["metadata"].update(metadata)
    return orjson.dumps(data)


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        # A 5,000-digit version used to crash int() past Python's digit limit.
        (_tampered(task(), protocol_version="1" * 5000 + ".0"), RejectReason.INVALID_ENVELOPE),
        # A non-ASCII signature used to crash hmac.compare_digest.
        (_tampered(task(), signature="é" * 64), RejectReason.INVALID_ENVELOPE),
        (_tampered(task(), signature="0" * 63), RejectReason.INVALID_ENVELOPE),
        (_tampered(task(), message_id="a b"), RejectReason.INVALID_ENVELOPE),
        (_tampered(task(), message_id="x" * 129), RejectReason.INVALID_ENVELOPE),
        (_tampered(task(), timestamp="2026-11-21T11:59:00Z"), RejectReason.BAD_SIGNATURE),
    ],
)
def test_every_field_is_bounded(raw: bytes, reason: RejectReason) -> None:
    with pytest.raises(MessageRejectedError) as refused:
        decode(raw, keyring=KEY, require_signature=True, now=NOW)
    assert refused.value.reason is reason


def test_a_timestamp_from_the_future_is_refused_signed_or_not() -> None:
    ahead = NOW + MAX_CLOCK_SKEW + dt.timedelta(seconds=1)
    for signer in (SIGNER, None):
        raw = encode(MessageType.TASK, {"t": "t"}, "c", now=ahead, audience=AUD, signer=signer)
        with pytest.raises(MessageRejectedError) as refused:
            decode(raw, keyring=KEY if signer else None, now=NOW)
        assert refused.value.reason is RejectReason.FUTURE_TIMESTAMP
    within = encode(MessageType.TASK, {"t": "t"}, "c", now=NOW, audience=AUD, signer=SIGNER)
    assert decode(within, keyring=KEY, now=NOW - MAX_CLOCK_SKEW + dt.timedelta(seconds=1))


def test_age_is_not_skew_when_the_receiver_says_so() -> None:
    """A signed task that waited a day in a backlog is still a valid task (max_age=None)."""
    old = task()
    later = NOW + dt.timedelta(days=1)
    with pytest.raises(MessageRejectedError) as refused:
        decode(old, keyring=KEY, require_signature=True, now=later)
    assert refused.value.reason is RejectReason.STALE, "system messages keep the window"
    assert decode(old, keyring=KEY, require_signature=True, now=later, max_age=None)


def test_decoding_is_total_even_for_what_the_models_let_through() -> None:
    # Nothing but MessageRejectedError may leave decode(), whatever the bytes.
    for raw in (b"\x00", b"[]", b'{"type": "task"}', "\ud800".encode("utf-8", "surrogatepass")):
        with pytest.raises(MessageRejectedError):
            decode(raw, keyring=KEY, now=NOW)
