"""Signatures bound to their audience, named by key ids, over one canonical form.

A signature over type, payload and sender proves who wrote a message but not for whom: a drain
notice captured on one fleet's channel then drained another fleet, and a signed task copied from
one fleet's stream ran in another's. So the signed bytes name the namespace, the fleet and the
channel, and a receiver refuses a message addressed to anybody but itself.

The canonical form, exact enough for any language to reproduce (README, "Signing from other
languages"; shared vectors in tests/vectors/signing.json):

    b"newfuse-sig-v1\\n" + JCS({"type": ..., "payload": ..., "metadata": <all but signature>})

JCS is RFC 8785 (JSON Canonicalization Scheme). Absent optional fields are left out, never null.
The signature is unpadded base64url.

A key id (`kid`) names each key, so a receiver holds an accept-set of several keys and a key
rotates without a window of refused messages. The key's type decides the algorithm, never a field
of the message (no algorithm confusion): an Ed25519 key signs with Ed25519, so a verifier needs
only the public key; bytes sign with HMAC-SHA256, a key shared by signer and verifier.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Final

import rfc8785
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

DOMAIN: Final = b"newfuse-sig-v1\n"
# A 32-byte HMAC tag or a 64-byte Ed25519 signature, unpadded base64url.
SIGNATURE_PATTERN: Final = r"^[A-Za-z0-9_-]{43}$|^[A-Za-z0-9_-]{86}$"
KID_PATTERN: Final = r"^[a-z0-9]{2,8}-[A-Za-z0-9_-]{1,64}$"

PrivateKey = Ed25519PrivateKey | bytes
PublicKey = Ed25519PublicKey | bytes


class Channel(StrEnum):
    """The three logical channels a message can be addressed to."""

    COORDINATION = "coordination"
    TASKS = "tasks"
    RESULTS = "results"


@dataclass(frozen=True)
class Audience:
    """Whom a message is for: one fleet's channel. Signed, and checked by the receiver."""

    namespace: str
    fleet: str
    channel: Channel

    def fields(self) -> dict[str, str]:
        """The metadata fields that carry it."""
        return {"namespace": self.namespace, "fleet": self.fleet, "channel": self.channel.value}


class CanonicalFormError(ValueError):
    """A value RFC 8785 cannot canonicalize (an integer beyond 2**53 - 1, say)."""


def canonical_bytes(type_: str, payload: Any, metadata: Mapping[str, Any]) -> bytes:
    """The bytes a signature covers: every metadata field but the signature itself."""
    unsigned = {k: v for k, v in metadata.items() if k != "signature" and v is not None}
    try:
        return DOMAIN + rfc8785.dumps({"type": type_, "payload": payload, "metadata": unsigned})
    except rfc8785.CanonicalizationError as exc:
        raise CanonicalFormError(
            f"cannot be signed: {exc} (RFC 8785 allows integers up to 2**53 - 1; send larger "
            "ones as strings)"
        ) from None


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def public_bytes(key: Ed25519PublicKey) -> bytes:
    """The 32 raw bytes of an Ed25519 public key."""
    return key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def key_id(key: PrivateKey | PublicKey) -> str:
    """A key's id, derived from it, so that no configuration can pair a kid with the wrong key.

    An HMAC key's id hashes it under a domain prefix; 64 bits of a hash of a key of at least
    32 bytes tell an attacker nothing usable.
    """
    if isinstance(key, Ed25519PrivateKey):
        key = key.public_key()
    if isinstance(key, Ed25519PublicKey):
        return "ed-" + _b64(hashlib.sha256(public_bytes(key)).digest()[:12])
    return "hs-" + _b64(hashlib.sha256(b"newfuse-kid\n" + key).digest()[:12])


@dataclass(frozen=True)
class Signer:
    """One private (or shared) key and its id."""

    key: PrivateKey
    kid: str = field(default="")

    def __post_init__(self) -> None:
        """Derive the key id unless one is given."""
        if not self.kid:
            object.__setattr__(self, "kid", key_id(self.key))

    def sign(self, canonical: bytes) -> str:
        """The signature of ``canonical`` (unpadded base64url)."""
        if isinstance(self.key, Ed25519PrivateKey):
            return _b64(self.key.sign(canonical))
        return _b64(hmac.new(self.key, canonical, hashlib.sha256).digest())

    def verifier(self) -> PublicKey:
        """What a receiver needs to check this signer's messages."""
        if isinstance(self.key, Ed25519PrivateKey):
            return self.key.public_key()
        return self.key


@dataclass(frozen=True)
class Keyring:
    """The accept-set: the keys, by id, whose signatures a receiver takes."""

    keys: Mapping[str, PublicKey]

    @classmethod
    def of(cls, keys: Iterable[PublicKey | Signer]) -> Keyring:
        """A keyring of ``keys`` (a Signer contributes what verifies it)."""
        found = [k.verifier() if isinstance(k, Signer) else k for k in keys]
        return cls({key_id(k): k for k in found})

    def __contains__(self, kid: object) -> bool:
        """True if ``kid`` is accepted."""
        return kid in self.keys

    def verify(self, kid: str, canonical: bytes, signature: str) -> bool:
        """True if the key ``kid`` signed ``canonical``; False for an unknown kid too."""
        key = self.keys.get(kid)
        if key is None:
            return False
        try:
            raw = _unb64(signature)
        except ValueError:
            return False
        if isinstance(key, Ed25519PublicKey):
            try:
                key.verify(raw, canonical)
            except InvalidSignature:
                return False
            return True
        return hmac.compare_digest(hmac.new(key, canonical, hashlib.sha256).digest(), raw)


@dataclass(frozen=True)
class Signing:
    """What one party signs with and which keys it accepts (neither: messages go unsigned)."""

    signer: Signer | None = None
    keyring: Keyring | None = None

    @classmethod
    def shared(cls, key: bytes | None) -> Signing:
        """One shared HMAC key that both signs and verifies (the operator's signing Secret)."""
        if not key:
            return cls()
        signer = Signer(key)
        return cls(signer, Keyring.of([signer]))
