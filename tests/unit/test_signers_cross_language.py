"""The Node.js and Go reference signers sign exactly as Python does, and Python accepts them.

Each signer reproduces every shared vector byte for byte, agrees with Python on seeded random
values (numbers from random bit patterns, strings of random code points, random keys: where
hand-written JCS implementations usually slip), and signs a task that `decode()` accepts, and
refuses once one byte of its payload changes. Without `node` or `go` these tests fail on CI and
skip elsewhere (see crosssign.py); that rule is tested too.
"""

from __future__ import annotations

import datetime as dt
import math
import random
import struct
import subprocess
from pathlib import Path
from typing import Any

import orjson
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import crosssign
from crosssign import LANGUAGES, VECTORS, run, sign_task
from newfuse.wire.envelope import MessageRejectedError, RejectReason, decode
from newfuse.wire.signing import Audience, Channel, Keyring, Signer, canonical_bytes

FILE: dict[str, Any] = orjson.loads(VECTORS.read_bytes())
HMAC_KEY = bytes.fromhex(FILE["keys"]["hmac"]["key_hex"])
ED_SEED = bytes.fromhex(FILE["keys"]["ed25519"]["seed_hex"])
SIGNERS = {
    "hmac": Signer(HMAC_KEY),
    "ed25519": Signer(Ed25519PrivateKey.from_private_bytes(ED_SEED)),
}
PER_LANGUAGE = pytest.mark.parametrize("language", LANGUAGES)


def signed_lines(language: str, path: Path = VECTORS) -> dict[tuple[str, str], dict[str, str]]:
    """What the signer prints in vectors mode, by (vector name, key type)."""
    lines = [orjson.loads(line) for line in run(language, "vectors", str(path)).splitlines()]
    return {(line["name"], line["key"]): line for line in lines}


@PER_LANGUAGE
def test_the_signer_reproduces_every_vector(language: str) -> None:
    got = signed_lines(language)
    want = {
        (v["name"], key): {
            "kid": e["kid"],
            "canonical_hex": e["canonical_hex"],
            "signature": e["signature"],
        }
        for v in FILE["vectors"]
        for key, e in v["expected"].items()
    }
    assert len(want) == 6
    assert set(got) == set(want)
    for case, expected in want.items():
        line = got[case]
        assert line["kid"] == expected["kid"], case
        if line["canonical_hex"] != expected["canonical_hex"]:
            # Show the canonical texts, so a mismatch reads as a JSON difference.
            text = bytes.fromhex(line["canonical_hex"]).decode(errors="replace")
            assert text == bytes.fromhex(expected["canonical_hex"]).decode(), case
        assert line["signature"] == expected["signature"], case


def random_value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value of the kinds the canonical form must agree on."""
    kind = rng.choice(["float", "float", "scaled", "int", "string", "bool", "null", "list", "dict"])
    if kind == "float":
        value: float = struct.unpack("<d", rng.randbytes(8))[0]
        return value if math.isfinite(value) else 0.5
    if kind == "scaled":
        return round(rng.uniform(-1, 1), rng.randint(0, 17)) * 10.0 ** rng.randint(-12, 30)
    if kind == "int":
        return rng.randint(-(2**53) + 1, 2**53 - 1) >> rng.randint(0, 52)
    if kind == "string":
        return random_string(rng)
    if kind in ("bool", "null"):
        return rng.choice([True, False]) if kind == "bool" else None
    if depth > 2:
        return random_string(rng)
    if kind == "list":
        return [random_value(rng, depth + 1) for _ in range(rng.randint(0, 5))]
    return {random_string(rng): random_value(rng, depth + 1) for _ in range(rng.randint(0, 6))}


def random_string(rng: random.Random) -> str:
    """Control characters, ASCII, BMP and astral code points (no lone surrogates: not JSON)."""
    ranges = [(0, 0x1F), (0x20, 0x7F), (0x80, 0xD7FF), (0xE000, 0xFFFF), (0x10000, 0x10FFFF)]
    return "".join(chr(rng.randint(*rng.choice(ranges))) for _ in range(rng.randint(0, 8)))


@PER_LANGUAGE
def test_random_values_canonicalize_as_in_python(language: str, tmp_path: Path) -> None:
    rng = random.Random(20261201)  # noqa: S311 (seeded on purpose: a failure must reproduce)
    metadata = {**FILE["vectors"][0]["metadata"]}
    vectors = [
        {
            "name": f"r{i}",
            "type": "task",
            "payload": {"input": random_value(rng, 1)},
            "metadata": metadata,
        }
        for i in range(60)
    ]
    path = tmp_path / "random.json"
    path.write_bytes(orjson.dumps({"keys": FILE["keys"], "vectors": vectors}))
    # What the signers read: the file as parsed (orjson writes floats that round-trip exactly).
    parsed = orjson.loads(path.read_bytes())["vectors"]
    got = signed_lines(language, path)
    for vector in parsed:
        for key, signer in SIGNERS.items():
            meta = {**vector["metadata"], "kid": signer.kid}
            canonical = canonical_bytes(vector["type"], vector["payload"], meta)
            line = got[(vector["name"], key)]
            assert bytes.fromhex(line["canonical_hex"]).decode() == canonical.decode()
            assert line["signature"] == signer.sign(canonical)


@PER_LANGUAGE
@pytest.mark.parametrize("key_type", ["hmac", "ed25519"])
def test_a_task_it_signs_is_accepted_and_a_changed_byte_refused(
    language: str, key_type: str
) -> None:
    key = HMAC_KEY if key_type == "hmac" else ED_SEED
    task_input = '{"text": "hello wörld 😀 \\"q\\"", "n": [1.5, 1e21, -0.0, 7], "ok": true}'
    raw = sign_task(language, "team-a", "summarizer", key, "x-1", task_input, key_type=key_type)
    keyring = Keyring.of([SIGNERS[key_type]])
    audience = Audience("team-a", "summarizer", Channel.TASKS)

    def check(message: bytes) -> Any:
        return decode(
            message,
            keyring=keyring,
            audience=audience,
            require_signature=True,
            now=dt.datetime.now(dt.UTC),
        )

    envelope = check(raw)
    assert envelope.payload == {
        "task_id": "x-1",
        "handler": "echo",
        "input": orjson.loads(task_input),
    }
    assert envelope.metadata.kid == SIGNERS[key_type].kid
    assert raw.count(b"hello") == 1
    with pytest.raises(MessageRejectedError) as refused:
        check(raw.replace(b"hello", b"hellp"))
    assert refused.value.reason is RejectReason.BAD_SIGNATURE


@PER_LANGUAGE
@pytest.mark.parametrize("number", ["9007199254740992", "-1e20", "123456789012345678"])
def test_an_integer_python_would_refuse_is_refused_at_signing(language: str, number: str) -> None:
    """Digits beyond ±(2^53 - 1) are refused by Python receivers: the signer says so at once."""
    args = ["--namespace", "a", "--fleet", "b", "--key", "00", "--task-id", "t", "--handler", "h"]
    done = subprocess.run(
        [*crosssign.command(language), "task", *args, "--input", f'{{"id": [{number}]}}'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    assert "beyond ±(2^53 - 1): send it as a string" in done.stderr


@pytest.mark.parametrize(
    ("ci", "outcome"), [("true", pytest.fail.Exception), ("", pytest.skip.Exception)]
)
def test_a_missing_runtime_fails_on_ci_and_skips_elsewhere(
    ci: str, outcome: type[BaseException], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CI", ci)
    monkeypatch.setattr("crosssign.shutil.which", lambda name: None)
    monkeypatch.setattr(crosssign, "GO_FALLBACK", Path("/nonexistent/go"))
    for tool in ("node", "go"):
        with pytest.raises(outcome, match=f"`{tool}` is not installed"):
            crosssign.require_tool(tool)
