"""Payload encryption: task inputs and results are sealed, so Redis and the DLQ hold no plaintext.

With `spec.encryption`, a task's payload (all but its id) is sealed by the client, and a result's
output, error and attempt history by the agent, with AES-256-GCM under the fleet's data key.
Redis, its AOF and backups, the DLQ and anybody who can read the fleet's keys then see ciphertext;
the agents and the users who may read the key's Secret see the plaintext.

The data key is derived from the Secret's text with HKDF-SHA256, so any long random string will do
(like the signing key). A key id (`kid`) names it and a receiver holds several, so the data key
rotates like the signing key. The additional data binds a ciphertext to its fleet, its task and
what it is, so a sealed input cannot be replayed as another task's input or as a result.

A sealed value is a JSON object `{"$sealed": "v1.<kid>.<nonce>.<ciphertext>"}` (base64url),
holding the JSON of the fields it replaces.
"""

from __future__ import annotations

import base64
import hashlib
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

import orjson
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

SEALED: Final = "$sealed"
VERSION: Final = "v1"
# What stays in the clear: what Redis scripts, routing and the operator read.
TASK_CLEAR: Final = frozenset({"task_id"})
RESULT_CLEAR: Final = frozenset(
    {"task_id", "status", "agent_id", "revision", "attempts", "latency_ms", "finished_at", "reason"}
)


class SealError(ValueError):
    """A sealed value that cannot be opened: unknown key, altered, or not for this place."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def _aad(namespace: str, fleet: str, task_id: str, kind: str) -> bytes:
    return f"newfuse-seal-v1\n{namespace}/{fleet}/{task_id}/{kind}".encode()


@dataclass(frozen=True)
class DataKey:
    """One AES-256 data key and its id, derived from a Secret's text."""

    key: bytes
    kid: str

    @classmethod
    def derive(cls, secret: bytes) -> DataKey:
        """The data key of ``secret`` (HKDF-SHA256, so any long random text will do)."""
        hkdf = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"newfuse-data-key-v1")
        key = hkdf.derive(secret)
        return cls(key, "dk-" + _b64(hashlib.sha256(b"newfuse-kid\n" + key).digest()[:12]))


@dataclass(frozen=True)
class Sealer:
    """Seals with one data key and opens with any of the accepted ones, for one fleet."""

    namespace: str
    fleet: str
    current: DataKey
    accepted: Mapping[str, DataKey]

    @classmethod
    def of(cls, namespace: str, fleet: str, secret: bytes, accept: Iterable[bytes] = ()) -> Sealer:
        """A sealer for a fleet whose data key is ``secret`` (and ``accept``, for rotation)."""
        current = DataKey.derive(secret)
        keys = [current, *(DataKey.derive(a) for a in accept)]
        return cls(namespace, fleet, current, {k.kid: k for k in keys})

    def seal(self, value: Any, task_id: str, kind: str) -> dict[str, str]:
        """``value`` (anything JSON) sealed for ``task_id``'s ``kind`` (task, result, letter)."""
        nonce = os.urandom(12)
        aad = _aad(self.namespace, self.fleet, task_id, kind)
        box = AESGCM(self.current.key).encrypt(nonce, orjson.dumps(value), aad)
        return {SEALED: f"{VERSION}.{self.current.kid}.{_b64(nonce)}.{_b64(box)}"}

    def open(self, sealed: Any, task_id: str, kind: str) -> Any:
        """The value ``sealed`` holds; SealError if it cannot be opened here."""
        text = sealed.get(SEALED) if isinstance(sealed, dict) else None
        parts = text.split(".") if isinstance(text, str) else []
        if len(parts) != 4 or parts[0] != VERSION:
            raise SealError("not a sealed value")
        key = self.accepted.get(parts[1])
        if key is None:
            raise SealError(f"sealed with key {parts[1][:40]!r}, which this side does not hold")
        aad = _aad(self.namespace, self.fleet, task_id, kind)
        try:
            return orjson.loads(AESGCM(key.key).decrypt(_unb64(parts[2]), _unb64(parts[3]), aad))
        except (InvalidTag, ValueError) as exc:
            raise SealError(f"cannot be opened ({type(exc).__name__})") from None

    def seal_fields(
        self, payload: Mapping[str, Any], clear: frozenset[str], kind: str
    ) -> dict[str, Any]:
        """``payload`` with every field but ``clear`` sealed into one `$sealed` field."""
        task_id = str(payload.get("task_id", ""))
        hidden = {k: v for k, v in payload.items() if k not in clear}
        return {
            **{k: v for k, v in payload.items() if k in clear},
            **self.seal(hidden, task_id, kind),
        }

    def open_fields(self, payload: Mapping[str, Any], kind: str) -> dict[str, Any]:
        """The inverse of `seal_fields`; a payload with nothing sealed is returned as it is."""
        if SEALED not in payload:
            return dict(payload)
        task_id = str(payload.get("task_id", ""))
        hidden = self.open({SEALED: payload[SEALED]}, task_id, kind)
        if not isinstance(hidden, dict):
            raise SealError("the sealed fields are not an object")
        return {**{k: v for k, v in payload.items() if k != SEALED}, **hidden}


def is_sealed(payload: Mapping[str, Any]) -> bool:
    """True if ``payload`` has sealed fields."""
    return SEALED in payload
