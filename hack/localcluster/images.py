"""Build the project's container images here, with no registry and no Docker engine.

Why: the real node (realnode.py) runs pods with containerd, which pulls any image it lacks from a
registry, and these machines have no registry and no Docker engine. So every image a pod needs is
built here and imported into containerd before the kubelet asks for it:

- a Python base image, from Debian packages by debootstrap (the public python:3.11-slim is on a
  registry); its root file system is cached as a tarball keyed by its inputs (about 2 min cold);
- a pause (sandbox) image: containerd's default one is on a registry too. A few lines of Go
  (pause/), its tag a hash of the source, so containerd's `sandbox_image` is known before start;
- the root Dockerfile's two targets, `operator` and `agent`, built by buildah against the local
  base (`--build-arg BASE=... --target ...`), each tagged by a hash of everything it copies and of
  its target, so an unchanged tree builds nothing and a test knows the exact image.

buildah always runs with the vfs driver (no overlay-on-overlay questions) and its own storage
under the cache (see BuildahStore), so images survive between runs and clusters and the host's
/var/lib/containers is left alone. Helpers in imagetools.py; tests in tests/unit/test_images.py.
"""

from __future__ import annotations

import argparse
import fcntl
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

from localcluster.imagetools import (
    BuildahStore,
    buildah_name,
    containerd_name,
    content_hash,
    inputs_key,
    run,
)

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
PAUSE_SOURCE = HERE / "pause"

# The base image's inputs: any change here is a new cache key, so a new base and new project tags.
SUITE = "bookworm"
MIRROR = "http://deb.debian.org/debian"  # the one apt uses (/etc/apt/sources.list.d/)
# python-is-python3: the Dockerfile runs `python -m pip`. ca-certificates: RUN steps reach PyPI.
PACKAGES = ("python3", "python3-venv", "python3-pip", "python-is-python3", "ca-certificates")
# Bump when the way the root file system is made changes (post-processing, tar options).
BASE_LAYOUT = 1
PAUSE_LAYOUT = 1

BASE_REPOSITORY = "localhost/newfuse/python-base"
PAUSE_REPOSITORY = "newfuse/pause"


class ProjectImage(NamedTuple):
    """Where a project image comes from: a Dockerfile (relative to the repository), a target."""

    dockerfile: str
    target: str


# One multi-target Dockerfile: both images share its build and runtime stages.
PROJECT_IMAGES = {
    "operator": ProjectImage("Dockerfile", "operator"),
    "agent": ProjectImage("Dockerfile", "agent"),
}
# What the Dockerfile copies from the context (plus the Dockerfile and .dockerignore themselves).
PROJECT_INPUTS = ("pyproject.toml", "uv.lock", "README.md", "operator/src", "agent_image/src")
BASE_ENV = (
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG=C.UTF-8",
)
HOST_CA_BUNDLE = Path("/etc/ssl/certs/ca-certificates.crt")

Log = Callable[[str], None]


@dataclass(frozen=True)
class ImageSet:
    """The images a pod spec names, written as a pod spec writes them (`newfuse/agent:dev-x`).

    containerd records them normalised (`docker.io/newfuse/agent:dev-x`, see containerd_name);
    `pause` is meant for containerd's CRI `sandbox_image`, which is normalised the same way.
    """

    operator: str
    agent: str
    pause: str


def cache_dir() -> Path:
    """The image cache: $NEWFUSE_CACHE/images, like the Makefile's cache (~/.cache/newfuse)."""
    root = os.environ.get("NEWFUSE_CACHE") or str(Path.home() / ".cache" / "newfuse")
    return Path(root) / "images"


def base_key() -> str:
    """The base image's cache key: a hash of everything debootstrap and the post-processing use."""
    return inputs_key(SUITE, MIRROR, ",".join(sorted(PACKAGES)), f"layout={BASE_LAYOUT}")


def base_image_ref() -> str:
    """The local base image in buildah's store (it never leaves buildah)."""
    return f"{BASE_REPOSITORY}:{base_key()}"


def pause_image_ref() -> str:
    """The pause image's reference, from its Go source alone: known before containerd starts."""
    sources = [Path("go.mod"), Path("main.go")]
    tag = content_hash(PAUSE_SOURCE, sources, f"layout={PAUSE_LAYOUT}")[:12]
    return f"{PAUSE_REPOSITORY}:{tag}"


def project_image_ref(which: str, base_ref: str | None = None) -> str:
    """`newfuse/<which>:dev-<hash12>`: the Dockerfile and its target, what it copies, the base.

    The target is part of the hash: both images come from the same files, yet differ.
    """
    image = PROJECT_IMAGES[which]
    inputs = [Path(image.dockerfile), Path(".dockerignore"), *(Path(p) for p in PROJECT_INPUTS)]
    base = f"base={base_ref or base_image_ref()}"
    tag = content_hash(REPO_ROOT, inputs, base, f"target={image.target}")[:12]
    return f"newfuse/{which}:dev-{tag}"


# --- the base image ----------------------------------------------------------------------------


def base_tarball(log: Log) -> Path:
    """The base root file system as a tarball: cached, or made by debootstrap (as root)."""
    out = cache_dir() / f"base-{base_key()}.tar"
    if out.exists():
        return out
    log(f"base image: debootstrap {SUITE} ({', '.join(PACKAGES)}) from {MIRROR}")
    rootfs = out.with_name(out.name + ".partial.d")
    shutil.rmtree(rootfs, ignore_errors=True)
    run(
        "debootstrap",
        "--variant=minbase",
        f"--include={','.join(PACKAGES)}",
        SUITE,
        str(rootfs),
        MIRROR,
    )
    missing = [p for p in PACKAGES if not _installed(rootfs, p)]
    if missing:  # --include resolves dependencies only roughly; apt in the chroot finishes it.
        log(f"base image: apt-get install {' '.join(missing)} in the chroot")
        run("chroot", str(rootfs), "apt-get", "install", "-y", "--no-install-recommends", *missing)
    run("chroot", str(rootfs), "apt-get", "clean")
    for leftover in ("var/lib/apt/lists", "var/cache/apt", "var/log"):
        for child in (rootfs / leftover).glob("*"):
            if child.is_dir() and not child.is_symlink():
                shutil.rmtree(child)
            else:
                child.unlink()
    # Like the upstream python image: `pip install` into the system interpreter is allowed, so
    # the Dockerfile's `python -m pip install uv` works unchanged (PEP 668 marker removed).
    for marker in rootfs.glob("usr/lib/python3*/EXTERNALLY-MANAGED"):
        marker.unlink()
    # debootstrap copied the host's; the container runtime mounts the pod's own over them.
    for host_file in ("etc/resolv.conf", "etc/hostname"):
        (rootfs / host_file).write_text("")
    partial = out.with_name(out.name + ".partial")
    # Device nodes are left out: the container runtime provides /dev, /proc and /sys.
    run(
        "tar",
        "--numeric-owner",
        "--exclude=./dev/*",
        "--exclude=./proc/*",
        "--exclude=./sys/*",
        "-C",
        str(rootfs),
        "-cf",
        str(partial),
        ".",
    )
    partial.rename(out)  # only a whole tarball ever has the final name
    shutil.rmtree(rootfs)
    return out


def _installed(rootfs: Path, package: str) -> bool:
    status = (rootfs / "var/lib/dpkg/status").read_text()
    return f"Package: {package}\nStatus: install ok installed" in status


def ensure_base(store: BuildahStore, log: Log) -> str:
    """The base image in buildah's store, made from the cached tarball when missing."""
    ref = base_image_ref()
    if store.has_image(ref):
        log(f"base image: cached ({ref})")
        return ref
    started = time.monotonic()
    tarball = base_tarball(log)
    container = store.output("from", "scratch")
    try:
        # With vfs, a mount is the container's directory: tar keeps owners, modes and links.
        mountpoint = store.output("mount", container)
        run("tar", "--numeric-owner", "-xpf", str(tarball), "-C", mountpoint)
        store.run("umount", container)
        env = [arg for pair in BASE_ENV for arg in ("--env", pair)]
        store.run("config", *env, "--cmd", '["python3"]', container)
        store.run("commit", "--rm", container, buildah_name(ref))
    except BaseException:
        store.run("rm", container, check=False)
        raise
    store.drop_other_tags(ref)
    log(f"base image: built in {time.monotonic() - started:.1f}s ({ref})")
    return ref


# --- the pause image ---------------------------------------------------------------------------


def build_pause(store: BuildahStore, log: Log) -> str:
    """The pause image: a static Go binary `FROM scratch`, built when its tag is missing."""
    ref = pause_image_ref()
    if store.has_image(ref):
        log(f"pause image: cached ({ref})")
        return ref
    started = time.monotonic()
    env = dict(os.environ, CGO_ENABLED="0", GOTOOLCHAIN="local", GOFLAGS="-buildvcs=false")
    env.setdefault("GOCACHE", str(cache_dir().parent / "go" / "build"))
    with tempfile.TemporaryDirectory(prefix="nf-pause-") as tmp:
        binary = Path(tmp) / "pause"
        run(
            "go", "build", "-trimpath", "-ldflags=-s -w", "-o", str(binary), ".",
            cwd=PAUSE_SOURCE, env=env,
        )  # fmt: skip
        container = store.output("from", "scratch")
        try:
            store.run("copy", "--chmod", "0755", container, str(binary), "/pause")
            store.run(
                "config", "--entrypoint", '["/pause"]', "--cmd", "", "--user", "65535:65535",
                container,
            )  # fmt: skip
            store.run("commit", "--rm", container, buildah_name(ref))
        except BaseException:
            store.run("rm", container, check=False)
            raise
    store.drop_other_tags(ref)
    log(f"pause image: built in {time.monotonic() - started:.1f}s ({ref})")
    return ref


# --- the project's images ----------------------------------------------------------------------


def ensure_project_image(store: BuildahStore, which: str, base_ref: str, log: Log) -> str:
    """Build the Dockerfile's `operator` or `agent` target unless its content tag exists."""
    image = PROJECT_IMAGES[which]
    ref = project_image_ref(which, base_ref)
    if store.has_image(ref):
        log(f"{which} image: cached ({ref})")
        return ref
    started = time.monotonic()
    log(f"{which} image: building {ref} from {image.dockerfile} (target {image.target})")
    # Build-time only (never committed): the host's CA bundle, so RUN steps trust whatever the
    # host trusts (an egress proxy's CA included), and a uv config that makes uv use that bundle
    # instead of its compiled-in roots. The Dockerfile stays unchanged for docker buildx.
    uv_toml = cache_dir() / "uv-system-certs.toml"
    uv_toml.write_text("system-certs = true\n")
    volumes = ["--volume", f"{uv_toml}:/etc/uv/uv.toml:ro"]
    if HOST_CA_BUNDLE.exists():
        volumes += ["--volume", f"{HOST_CA_BUNDLE}:{HOST_CA_BUNDLE}:ro"]
    build_log = cache_dir() / "logs" / f"{which}.log"
    # No --layers: with vfs every cached step is a full copy of the root file system plus a
    # full-tree diff, so a layered build took 118-158 s against 43 s for one commit per stage.
    # A rebuild still reuses the downloads: RUN --mount=type=cache lives under the store's TMPDIR.
    store.run(
        "bud", "--isolation", "chroot", "--pull=never", "--layers=false", "--force-rm", *volumes,
        "--build-arg", f"BASE={base_ref}", "-f", image.dockerfile, "--target", image.target,
        "-t", buildah_name(ref), ".",
        cwd=REPO_ROOT, log_file=build_log,
    )  # fmt: skip
    store.drop_other_tags(ref)
    log(f"{which} image: built in {time.monotonic() - started:.1f}s ({ref})")
    return ref


# --- the whole set -----------------------------------------------------------------------------


@contextmanager
def _locked() -> Iterator[None]:
    """One build at a time per cache (two test sessions may start clusters at once)."""
    cache_dir().mkdir(parents=True, exist_ok=True)
    with (cache_dir() / ".lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def build_images(log: Log = print) -> ImageSet:
    """Build whatever is missing of base, pause, operator and agent; import nothing."""
    store = BuildahStore(cache_dir().parent / "buildah")
    with _locked():
        # Working containers left by a killed run (each a full vfs copy); none can be in use
        # while the lock is held, since only this module uses this store.
        store.run("rm", "--all", check=False)
        base = ensure_base(store, log)
        return ImageSet(
            operator=ensure_project_image(store, "operator", base, log),
            agent=ensure_project_image(store, "agent", base, log),
            pause=build_pause(store, log),
        )


def import_images(refs: Iterable[str], containerd_socket: Path, log: Log = print) -> None:
    """Import the images containerd lacks, under the names a pod spec's references resolve to."""
    store = BuildahStore(cache_dir().parent / "buildah")
    ctr = ("ctr", "--address", str(containerd_socket), "-n", "k8s.io")
    present = set(run(*ctr, "images", "ls", "-q", capture=True).split())
    archives = cache_dir() / "archives"
    archives.mkdir(parents=True, exist_ok=True)
    for ref in refs:
        name = containerd_name(ref)
        if name in present:
            log(f"containerd: has {name}")
            continue
        started = time.monotonic()
        archive = archives / (name.replace("/", "_").replace(":", "_") + ".tar")
        if not archive.exists():
            partial = archive.with_name(archive.name + ".partial")
            partial.unlink(missing_ok=True)
            # OCI rather than docker-archive: ctr records exactly the name given here (a docker
            # archive adds buildah's localhost/ name too), the layers are compressed (113 MB
            # against 396 MB for the agent) and the import is faster (13 s against 20 s).
            store.run("push", buildah_name(ref), f"oci-archive:{partial}:{name}")
            partial.rename(archive)
            for old in archives.glob(name.rsplit(":", 1)[0].replace("/", "_") + "_*.tar"):
                if old != archive:
                    old.unlink()  # earlier tags of the same repository
        run(*ctr, "images", "import", str(archive))
        log(f"containerd: imported {name} in {time.monotonic() - started:.1f}s")


def ensure_pause(containerd_socket: Path, log: Log = print) -> str:
    """Build the pause image if missing and import it: all a node needs before its first pod."""
    with _locked():
        ref = build_pause(BuildahStore(cache_dir().parent / "buildah"), log)
        import_images([ref], containerd_socket, log)
    return ref


def ensure_images(containerd_socket: Path, log: Log = print) -> ImageSet:
    """Build what is missing (base, pause, operator, agent), import it into containerd."""
    images = build_images(log)
    with _locked():
        import_images([images.operator, images.agent, images.pause], containerd_socket, log)
    return images


def main(argv: list[str] | None = None) -> int:
    """`python -m localcluster.images build [--import SOCKET]`: build, print the references."""
    parser = argparse.ArgumentParser(prog="python -m localcluster.images", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser("build", help="build what is missing and print the references")
    build.add_argument("--import", dest="socket", type=Path, help="also import into containerd")
    sub.add_parser("refs", help="print the references without building (pause, base)")
    args = parser.parse_args(argv)

    def log(line: str) -> None:
        print(line, file=sys.stderr, flush=True)

    if args.command == "refs":
        print(f"pause={pause_image_ref()}\nbase={base_image_ref()}")
        for which in PROJECT_IMAGES:
            print(f"{which}={project_image_ref(which)}")
        return 0
    started = time.monotonic()
    images = ensure_images(args.socket, log) if args.socket else build_images(log)
    log(f"images: ready in {time.monotonic() - started:.1f}s")
    print(f"operator={images.operator}\nagent={images.agent}\npause={images.pause}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
