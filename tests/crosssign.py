"""The reference signers in other languages (hack/signers), as commands the tests can run.

They prove that the documented canonical form is enough to sign from outside Python, so a test
that cannot run them must not pass quietly: without `node` or `go` it fails on CI (CI=true) and
skips elsewhere, saying what is missing.

The Go signer is built once per source hash into the cache (like the control-plane binaries,
$NEWFUSE_CACHE or ~/.cache/newfuse, with Go's build and module caches there too), so only the
first run after a change pays for `go build`.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
VECTORS = REPO / "tests" / "vectors" / "signing.json"
NODE_SIGNER = REPO / "hack" / "signers" / "node" / "sign.mjs"
GO_SOURCE = REPO / "hack" / "signers" / "go"
LANGUAGES = ("node", "go")
# Where Go's official installer puts it, when it is not on PATH.
GO_FALLBACK = Path("/usr/local/go/bin/go")


def require_tool(name: str) -> str:
    """The path of ``name``; a failure on CI, a skip elsewhere, when it is not installed."""
    found = shutil.which(name) or (
        str(GO_FALLBACK) if name == "go" and GO_FALLBACK.exists() else None
    )
    if found:
        return found
    reason = f"`{name}` is not installed: the cross-language signing tests need it"
    if os.environ.get("CI", "").lower() in ("true", "1"):
        pytest.fail(reason + " (and CI=true requires them)")
    pytest.skip(reason)


def cache_dir() -> Path:
    """The project cache: $NEWFUSE_CACHE, like the Makefile's (~/.cache/newfuse)."""
    return Path(os.environ.get("NEWFUSE_CACHE") or Path.home() / ".cache" / "newfuse")


def go_source_hash(go: str) -> str:
    """A hash of the Go signer's sources and of the Go version that builds them."""
    digest = hashlib.sha256()
    version = subprocess.run([go, "env", "GOVERSION"], capture_output=True, text=True, check=True)
    digest.update(version.stdout.encode())
    for path in sorted(GO_SOURCE.iterdir()):
        if path.is_file() and path.suffix in (".go", ".mod", ".sum"):
            digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


@functools.cache
def go_signer() -> tuple[Path, float | None]:
    """The built Go signer, and how long building it took (None: it was cached)."""
    go = require_tool("go")
    out = cache_dir() / "signers" / f"go-sign-{go_source_hash(go)}"
    if out.exists():
        return out, None
    out.parent.mkdir(parents=True, exist_ok=True)
    # Two test sessions may build at once: one builds, the other waits and then finds it.
    with (out.parent / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if out.exists():
            return out, None
        started = time.monotonic()
        env = {
            **os.environ,
            "GOCACHE": str(cache_dir() / "go" / "build"),
            "GOMODCACHE": str(cache_dir() / "go" / "mod"),
            "GOTOOLCHAIN": "local",
            "GOFLAGS": "-buildvcs=false",
            "CGO_ENABLED": "0",
        }
        partial = out.with_suffix(".partial")
        built = subprocess.run(
            [go, "build", "-trimpath", "-o", str(partial), "."],
            cwd=GO_SOURCE, env=env, capture_output=True, text=True,
        )  # fmt: skip
        assert built.returncode == 0, f"go build of {GO_SOURCE} failed:\n{built.stderr}"
        partial.replace(out)  # atomic: nobody ever runs a half-written binary
        return out, time.monotonic() - started


def command(language: str) -> list[str]:
    """The command line that runs the signer of ``language``."""
    if language == "node":
        return [require_tool("node"), str(NODE_SIGNER)]
    if language == "go":
        return [str(go_signer()[0])]
    raise ValueError(language)


def run(language: str, *args: str) -> str:
    """Run a signer and return its standard output; its error output on failure."""
    done = subprocess.run(
        [*command(language), *args], capture_output=True, text=True, timeout=60, cwd=REPO
    )
    assert done.returncode == 0, f"{language} signer failed ({done.returncode}): {done.stderr}"
    return done.stdout


def sign_task(
    language: str,
    namespace: str,
    fleet: str,
    key: bytes,
    task_id: str,
    input_json: str,
    *,
    key_type: str = "hmac",
    handler: str = "echo",
) -> bytes:
    """A task envelope signed by the signer of ``language`` (``key``: HMAC key or Ed25519 seed)."""
    out = run(
        language, "task", "--namespace", namespace, "--fleet", fleet, "--key", key.hex(),
        "--key-type", key_type, "--task-id", task_id, "--handler", handler, "--input", input_json,
    )  # fmt: skip
    return out.strip().encode()
