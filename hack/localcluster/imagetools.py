"""The pure parts of images.py (cache keys, content tags, reference names) and its buildah calls.

Kept apart so the unit tests import no build machinery, and images.py stays one story: what is
built, from what, in which order.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import subprocess
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import IO

# Never part of a build context (.dockerignore says so), so never part of a content tag either.
IGNORED_DIRS = frozenset({"__pycache__", ".mypy_cache", ".pytest_cache", ".ruff_cache"})
IGNORED_SUFFIXES = (".pyc", ".pyo", ".pyd")


def inputs_key(*inputs: str) -> str:
    """A 16-hex-digit key for a list of inputs (order matters; no input can run into the next)."""
    digest = hashlib.sha256()
    for value in inputs:
        data = value.encode()
        digest.update(len(data).to_bytes(8, "big") + data)
    return digest.hexdigest()[:16]


def _files(root: Path, inputs: Iterable[Path]) -> Iterator[Path]:
    for relative in inputs:
        path = root / relative
        if not path.exists():
            raise FileNotFoundError(path)
        if path.is_file():
            yield relative
            continue
        for directory, dirnames, filenames in os.walk(path):
            dirnames[:] = sorted(d for d in dirnames if d not in IGNORED_DIRS)
            for name in sorted(filenames):
                if not name.endswith(IGNORED_SUFFIXES):
                    yield (Path(directory) / name).relative_to(root)


def content_hash(root: Path, inputs: Iterable[Path], *extra: str) -> str:
    """A 16-hex-digit hash of the files under ``inputs`` (relative to ``root``) and ``extra``.

    Paths, contents and the executable bit count; byte-code caches do not. A missing input is an
    error, so a renamed file cannot silently drop out of the tag.
    """
    parts = list(extra)
    for relative in _files(root, inputs):
        path = root / relative
        executable = "x" if os.access(path, os.X_OK) else "-"
        parts += [relative.as_posix(), executable, hashlib.sha256(path.read_bytes()).hexdigest()]
    return inputs_key(*parts)


def has_domain(ref: str) -> bool:
    """Whether a reference starts with a registry host (docker's rule: a dot, a port, localhost)."""
    first, slash, _ = ref.partition("/")
    return bool(slash) and ("." in first or ":" in first or first == "localhost")


def containerd_name(ref: str) -> str:
    """The name containerd (and the kubelet) give a pod spec's image reference.

    `newfuse/agent:dev-x` is `docker.io/newfuse/agent:dev-x`; `python:3.11` is
    `docker.io/library/python:3.11`; a reference with a registry host stays as it is; no tag
    means `:latest`.
    """
    name = ref
    if not has_domain(ref):
        name = f"docker.io/{ref}" if "/" in ref else f"docker.io/library/{ref}"
    last = name.rsplit("/", 1)[-1]
    if ":" not in last and "@" not in last:
        name += ":latest"
    return name


def buildah_name(ref: str) -> str:
    """The name buildah stores a short reference under (`localhost/` in front)."""
    return ref if has_domain(ref) else f"localhost/{ref}"


def run(
    *command: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    capture: bool = False,
    check: bool = True,
    log_file: Path | None = None,
) -> str:
    """Run a command; return its output (capture), or keep it in ``log_file`` (or drop it).

    A failing command raises with the output's tail (and the log's path), so an error says what
    went wrong without flooding the caller's terminal on success.
    """
    with contextlib.ExitStack() as stack:
        sink: IO[str] | int = subprocess.PIPE
        if log_file is not None:
            log_file.parent.mkdir(parents=True, exist_ok=True)
            sink = stack.enter_context(log_file.open("w"))
        result = subprocess.run(
            command,
            cwd=cwd,
            env=env,
            text=True,
            stdout=sink,
            stderr=subprocess.PIPE if capture else subprocess.STDOUT,
            check=False,
        )
    if check and result.returncode != 0:
        output = log_file.read_text() if log_file else f"{result.stdout}{result.stderr or ''}"
        tail = "\n".join(output.splitlines()[-30:])
        where = f" (full output: {log_file})" if log_file else ""
        raise RuntimeError(f"{' '.join(command)} exited {result.returncode}{where}\n{tail}")
    return (result.stdout or "") if capture else ""


class BuildahStore:
    """buildah with its own storage under the cache, always with the vfs driver.

    Own storage under the cache: the images survive between runs (and between clusters: a fresh
    containerd gets them without a rebuild) and the host's /var/lib/containers is left alone.
    vfs: no overlay mounts to clean up, whatever file system the cache is on; it costs disk and
    time (each layer is a full copy), hence drop_other_tags and images.py's `--layers=false`.
    """

    def __init__(self, root: Path) -> None:
        self.root = root
        self.tmp = root / "tmp"

    def _command(self, args: Iterable[str]) -> list[str]:
        return [
            "buildah",
            "--root",
            str(self.root / "storage"),
            # Lock files and transient state; kept next to the storage rather than in /run, so
            # one directory holds all of it and nothing else on the host is touched.
            "--runroot",
            str(self.root / "run"),
            "--storage-driver",
            "vfs",
            *args,
        ]

    def _env(self) -> dict[str, str]:
        # buildah's temporary files and its RUN --mount=type=cache directories follow TMPDIR.
        self.tmp.mkdir(parents=True, exist_ok=True)
        return dict(os.environ, TMPDIR=str(self.tmp))

    def run(
        self, *args: str, cwd: Path | None = None, check: bool = True, log_file: Path | None = None
    ) -> None:
        """Run `buildah <args>` against this store."""
        run(*self._command(args), cwd=cwd, env=self._env(), check=check, log_file=log_file)

    def output(self, *args: str) -> str:
        """Run `buildah <args>` and return its stripped output (a container's name, a path)."""
        return run(*self._command(args), env=self._env(), capture=True).strip()

    def has_image(self, ref: str) -> bool:
        """Whether the store holds an image under this reference."""
        command = self._command(["inspect", "--type", "image", buildah_name(ref)])
        return subprocess.run(command, env=self._env(), capture_output=True).returncode == 0

    def drop_other_tags(self, ref: str) -> None:
        """Remove the repository's other tags and what only they held (vfs layers are big)."""
        name = buildah_name(ref)
        repository = name.rsplit(":", 1)[0]
        listed = self.output("images", "--format", "{{.Name}}:{{.Tag}}")
        for other in listed.split():
            if other.rsplit(":", 1)[0] == repository and other != name:
                self.run("rmi", other, check=False)
        self.run("rmi", "--prune", check=False)
