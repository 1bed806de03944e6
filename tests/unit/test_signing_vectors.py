"""The shared signing vectors (tests/vectors/signing.json) are what the Python signer produces.

The vectors are the contract other languages sign against (README, "Signing from other
languages"). They were made once and committed, so any change to the canonical form, the key ids
or the algorithms fails here before it can silently break every non-Python client. The key ids are
also recomputed from the documented rule itself, not only through `key_id`.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from crosssign import VECTORS
from newfuse.wire.envelope import MessageRejectedError, RejectReason, decode
from newfuse.wire.signing import (
    DOMAIN,
    Audience,
    Channel,
    Keyring,
    Signer,
    canonical_bytes,
    public_bytes,
)

FILE: dict[str, Any] = orjson.loads(VECTORS.read_bytes())
HMAC_KEY = bytes.fromhex(FILE["keys"]["hmac"]["key_hex"])
ED_KEY = Ed25519PrivateKey.from_private_bytes(bytes.fromhex(FILE["keys"]["ed25519"]["seed_hex"]))
SIGNERS = {"hmac": Signer(HMAC_KEY), "ed25519": Signer(ED_KEY)}
CASES = [(v, name) for v in FILE["vectors"] for name in SIGNERS]
IDS = [f"{v['name']}-{name}" for v, name in CASES]


def b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def test_the_vectors_cover_every_channel_and_both_key_types() -> None:
    channels = {v["metadata"]["channel"] for v in FILE["vectors"]}
    assert channels == {c.value for c in Channel}
    assert all(set(v["expected"]) == set(SIGNERS) for v in FILE["vectors"])
    assert FILE["domain"].encode() == DOMAIN


def test_the_key_ids_follow_the_documented_rule() -> None:
    public = bytes.fromhex(FILE["keys"]["ed25519"]["public_hex"])
    assert public_bytes(ED_KEY.public_key()) == public
    documented = {
        "hmac": "hs-" + b64(hashlib.sha256(b"newfuse-kid\n" + HMAC_KEY).digest()[:12]),
        "ed25519": "ed-" + b64(hashlib.sha256(public).digest()[:12]),
    }
    for vector in FILE["vectors"]:
        for name, kid in documented.items():
            assert vector["expected"][name]["kid"] == kid == SIGNERS[name].kid


@pytest.mark.parametrize(("vector", "key"), CASES, ids=IDS)
def test_python_reproduces_the_vector_exactly(vector: dict[str, Any], key: str) -> None:
    want = vector["expected"][key]
    signer = SIGNERS[key]
    metadata = {**vector["metadata"], "kid": signer.kid}
    canonical = canonical_bytes(vector["type"], vector["payload"], metadata)
    assert canonical == bytes.fromhex(want["canonical_hex"])
    assert canonical == want["canonical"].encode()
    # Both algorithms are deterministic (Ed25519 by its design), so the signature is exact too.
    assert signer.sign(canonical) == want["signature"]


@pytest.mark.parametrize(("vector", "key"), CASES, ids=IDS)
def test_the_vector_envelope_verifies_and_a_changed_byte_does_not(
    vector: dict[str, Any], key: str
) -> None:
    want = vector["expected"][key]
    meta = vector["metadata"]
    audience = Audience(meta["namespace"], meta["fleet"], Channel(meta["channel"]))
    # A verifier of an Ed25519 vector holds only the public key from the file.
    public = Ed25519PublicKey.from_public_bytes(
        bytes.fromhex(FILE["keys"]["ed25519"]["public_hex"])
    )
    keyring = Keyring.of([HMAC_KEY if key == "hmac" else public])
    now = dt.datetime.fromisoformat(meta["timestamp"])
    envelope = decode(
        want["envelope"], keyring=keyring, audience=audience, require_signature=True, now=now
    )
    assert envelope.payload == vector["payload"]
    assert envelope.metadata.signature == want["signature"]
    # The signature covers the bytes JCS makes of the parsed message, not the text as sent: a
    # changed value is refused, a changed layout is not.
    data = orjson.loads(want["envelope"])
    first = sorted(data["payload"])[0]
    data["payload"][first] = "changed"
    tampered = orjson.dumps(data)
    with pytest.raises(MessageRejectedError) as refused:
        decode(tampered, keyring=keyring, require_signature=True, now=now)
    assert refused.value.reason is RejectReason.BAD_SIGNATURE
    relaid = orjson.dumps(orjson.loads(want["envelope"]), option=orjson.OPT_INDENT_2)
    assert decode(relaid, keyring=keyring, audience=audience, require_signature=True, now=now)
