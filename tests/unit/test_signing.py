"""Every signed field is covered, the audience is checked, and keys rotate through an accept-set.

The tamper table changes one field at a time and expects a refusal from the signature alone (no
audience check), for both key types. `test_the_tamper_table_catches_an_unsigned_field` runs the
same check against signing code mutated to leave each field out, proving the table would fail.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from newfuse.wire import envelope as envelope_module
from newfuse.wire.envelope import MessageRejectedError, MessageType, RejectReason, decode, encode
from newfuse.wire.signing import Audience, Channel, Keyring, Signer, canonical_bytes, key_id
from newfuse_agent.config import AgentConfig

NOW = dt.datetime(2026, 12, 1, 3, 0, tzinfo=dt.UTC)
AUD = Audience("team-a", "summarizer", Channel.COORDINATION)
HMAC = Signer(b"0123456789abcdef0123456789abcdef")
ED = Signer(Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
SIGNERS = pytest.mark.parametrize("signer", [HMAC, ED], ids=["hmac", "ed25519"])

# One changed value per signed field: each still passes validation, so only the signature can
# catch it. The kid is changed to another accepted id of the same key (see `keyring_of`).
TAMPERS: dict[str, tuple[tuple[str, ...], Any]] = {
    "type": (("type",), "ping"),
    "payload": (("payload", "target"), "everyone"),
    "namespace": (("metadata", "namespace"), "team-b"),
    "fleet": (("metadata", "fleet"), "other"),
    "channel": (("metadata", "channel"), "tasks"),
    "sender": (("metadata", "sender"), "mallory"),
    "message id": (("metadata", "message_id"), "m-2"),
    "timestamp": (("metadata", "timestamp"), (NOW - dt.timedelta(seconds=1)).isoformat()),
    "key id": (("metadata", "kid"), "hs-alias"),
    "protocol version": (("metadata", "protocol_version"), "1.1"),
    "trace context": (("metadata", "traceparent"), "00-other-01"),
}


def drain(signer: Signer, **overrides: Any) -> bytes:
    return encode(
        MessageType.DRAIN,
        {"target": "*"},
        "newfuse-operator",
        now=NOW,
        audience=overrides.pop("audience", AUD),
        signer=signer,
        message_id="m-1",
        traceparent="00-trace-01",
        **overrides,
    )


def keyring_of(signer: Signer) -> Keyring:
    """The signer's key, accepted under its own id and under an alias."""
    return Keyring({signer.kid: signer.verifier(), "hs-alias": signer.verifier()})


def with_field(raw: bytes, path: tuple[str, ...], value: Any) -> bytes:
    data = orjson.loads(raw)
    node = data
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return orjson.dumps(data)


def tamper_refused(signer: Signer, field: str) -> bool:
    """True if changing ``field`` of a signed drain notice gets it refused by its signature."""
    raw = with_field(drain(signer), *TAMPERS[field])
    reason = None
    try:
        decode(raw, keyring=keyring_of(signer), require_signature=True, now=NOW)
    except MessageRejectedError as refused:
        reason = refused.reason
    assert reason in (None, RejectReason.BAD_SIGNATURE), reason
    return reason is RejectReason.BAD_SIGNATURE


@SIGNERS
@pytest.mark.parametrize("field", list(TAMPERS))
def test_changing_any_signed_field_gets_the_message_refused(signer: Signer, field: str) -> None:
    assert decode(drain(signer), keyring=keyring_of(signer), require_signature=True, now=NOW)
    assert tamper_refused(signer, field), f"{field} is not covered by the signature"


@pytest.mark.parametrize("field", list(TAMPERS))
def test_the_tamper_table_catches_an_unsigned_field(
    field: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A signing-code mutation that leaves ``field`` out must make the table above fail."""
    path = TAMPERS[field][0]

    def leaves_out(type_: str, payload: Any, metadata: Any) -> bytes:
        parts: dict[str, Any] = {
            "type": type_,
            "payload": dict(payload),
            "metadata": dict(metadata),
        }
        if len(path) == 1:
            parts[path[0]] = ""
        else:
            parts[path[0]].pop(path[1], None)
        return canonical_bytes(parts["type"], parts["payload"], parts["metadata"])

    monkeypatch.setattr(envelope_module, "canonical_bytes", leaves_out)
    assert not tamper_refused(HMAC, field)


@SIGNERS
@pytest.mark.parametrize(
    "receiver",
    [
        Audience("team-b", "summarizer", Channel.COORDINATION),
        Audience("team-a", "other", Channel.COORDINATION),
        Audience("team-a", "summarizer", Channel.TASKS),
    ],
    ids=["other namespace", "other fleet", "other channel"],
)
def test_a_message_for_someone_else_is_refused(signer: Signer, receiver: Audience) -> None:
    with pytest.raises(MessageRejectedError) as refused:
        decode(drain(signer), keyring=keyring_of(signer), audience=receiver, now=NOW)
    assert refused.value.reason is RejectReason.WRONG_AUDIENCE
    assert "team-a/summarizer/coordination" in refused.value.detail


def test_a_signed_message_naming_no_audience_is_refused_by_a_receiver_that_has_one() -> None:
    raw = drain(HMAC)
    for field in ("namespace", "fleet", "channel"):
        data = orjson.loads(raw)
        del data["metadata"][field]
        with pytest.raises(MessageRejectedError) as refused:
            decode(orjson.dumps(data), keyring=keyring_of(HMAC), audience=AUD, now=NOW)
        assert refused.value.reason is RejectReason.WRONG_AUDIENCE


def test_a_signature_needs_an_audience() -> None:
    with pytest.raises(ValueError, match="audience"):
        drain(HMAC, audience=None)


def test_an_unknown_key_id_is_its_own_reason() -> None:
    with pytest.raises(MessageRejectedError) as refused:
        decode(drain(ED), keyring=Keyring.of([HMAC]), audience=AUD, now=NOW)
    assert refused.value.reason is RejectReason.UNKNOWN_KEY


def test_rotation_accepts_old_and_new_keys_and_verifiers_need_no_private_key() -> None:
    new = Signer(Ed25519PrivateKey.generate())
    ring = Keyring.of([ED.verifier(), new.verifier()])  # public keys only
    for signer in (ED, new):
        assert decode(drain(signer), keyring=ring, audience=AUD, require_signature=True, now=NOW)
    assert key_id(ED.key) == key_id(ED.verifier()) == ED.kid
    assert ED.kid.startswith("ed-")
    assert HMAC.kid.startswith("hs-")


def test_an_agent_signs_with_its_key_and_accepts_the_accept_set_too() -> None:
    old, new = "old-key-" + "o" * 32, "new-key-" + "n" * 32
    config = AgentConfig.from_env(
        {
            "NEWFUSE_AGENT_ID": "a-0",
            "NEWFUSE_FLEET": "f",
            "NEWFUSE_SIGNING_KEY": old,
            "NEWFUSE_SIGNING_ACCEPT": f"\n{new}\n\n",
        }
    )
    signing = config.signing
    assert signing.signer is not None
    assert signing.signer.kid == key_id(old.encode())
    assert signing.keyring is not None
    assert set(signing.keyring.keys) == {key_id(old.encode()), key_id(new.encode())}
    assert old not in repr(config)
    assert new not in repr(config)


def test_a_value_the_canonical_form_cannot_hold_is_a_clear_error_both_ways() -> None:
    too_big = {"target": 2**53}
    with pytest.raises(ValueError, match="integers up to 2\\*\\*53 - 1"):
        encode(MessageType.DRAIN, too_big, "o", now=NOW, audience=AUD, signer=HMAC)
    data = orjson.loads(drain(HMAC))
    data["payload"] = too_big
    with pytest.raises(MessageRejectedError) as refused:
        decode(orjson.dumps(data), keyring=keyring_of(HMAC), now=NOW)
    assert refused.value.reason is RejectReason.INVALID_PAYLOAD
    assert "send larger ones as strings" in refused.value.detail
