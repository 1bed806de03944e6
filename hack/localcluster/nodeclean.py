"""Leave the machine as it was before the real node: processes, mounts, network, cgroups, paths.

Stopping the kubelet and containerd is not enough. Containers live on under their shims (which
detach from containerd), the kubelet bind-mounts its root dir onto itself and mounts every pod's
volumes, the CNI plugin leaves a bridge and network namespaces, the kubelet's cgroups stay, and
a few paths are fixed by the kubelet and containerd whatever their config says. Each step below
removes one of those, using only what this node created: its socket, its bridge name, its state
directory and the cgroup roots the kubelet and containerd use.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Final

from localcluster.nodeconfig import BRIDGE, NodePaths

CGROUP_ROOT: Final = Path("/sys/fs/cgroup")
# kubepods: the kubelet's QoS tree (cgroupfs driver); k8s.io: containerd's for non-CRI tasks.
CGROUP_TOPS: Final = ("kubepods", "k8s.io")
NETNS_DIR: Final = Path("/run/netns")
# Paths the kubelet and containerd use whatever their config says (one real node per machine).
FIXED_PATHS: Final = (
    Path("/var/log/containers"),
    Path("/var/lib/kubelet"),
    Path("/run/containerd"),
    Path("/var/lib/cni"),
)
SHIM: Final = "containerd-shim"


def _cgroup_dirs() -> Iterator[Path]:
    """Every cgroup directory under the node's tops, deepest first, in every v1 hierarchy."""
    if not CGROUP_ROOT.is_dir():
        return
    for hierarchy in sorted(CGROUP_ROOT.iterdir()):
        for top in CGROUP_TOPS:
            base = hierarchy / top
            if base.is_dir() and not base.is_symlink():
                found = [Path(d) for d, _, _ in os.walk(base)]
                yield from sorted(found, key=lambda p: len(p.parts), reverse=True)


def cgroup_pids() -> set[int]:
    """PIDs of every process still in one of the node's cgroups (its containers)."""
    pids: set[int] = set()
    for directory in _cgroup_dirs():
        with contextlib.suppress(OSError):
            pids.update(int(p) for p in (directory / "cgroup.procs").read_text().split())
    return pids


def shim_pids(socket: Path) -> set[int]:
    """Containerd shims started by the containerd listening on ``socket``."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            argv = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if argv and SHIM in argv[0].decode(errors="replace") and str(socket).encode() in argv:
            found.add(int(proc.name))
    return found


def _kill_all(pids_of: Callable[[], set[int]], what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while pids := pids_of():
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what} survived SIGKILL: {sorted(pids)}")
        time.sleep(0.1)


def kill_containers(socket: Path) -> None:
    """SIGKILL every container process, then the shims that watched them."""
    _kill_all(cgroup_pids, "container processes")
    _kill_all(lambda: shim_pids(socket), "containerd shims")


def _unescape(field: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as octal.
    for code, char in (("\\040", " "), ("\\011", "\t"), ("\\012", "\n"), ("\\134", "\\")):
        field = field.replace(code, char)
    return field


def mounts_under(prefixes: tuple[Path, ...]) -> list[str]:
    """Mount points at or below any of ``prefixes``, deepest first."""
    points = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = _unescape(line.split()[4])
        if any(point == str(p) or point.startswith(f"{p}/") for p in prefixes):
            points.append(point)
    return sorted(points, key=lambda p: p.count("/"), reverse=True)


def node_mount_prefixes(paths: NodePaths) -> tuple[Path, ...]:
    """Where the node's mounts live: its state dir, network namespaces and the fixed paths."""
    return (paths.root, NETNS_DIR, *FIXED_PATHS)


def unmount_all(paths: NodePaths) -> None:
    """Unmount everything the node mounted; lazily when a mount is still busy."""
    prefixes = node_mount_prefixes(paths)
    # The kubelet root is mounted onto itself, so one point may need several passes.
    for _ in range(20):
        points = mounts_under(prefixes)
        if not points:
            return
        for point in points:
            if subprocess.run(["umount", point], capture_output=True, check=False).returncode:
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
    left = mounts_under(prefixes)
    if left:
        raise RuntimeError(f"could not unmount: {left}")


def bridge_exists() -> bool:
    """Whether the pod bridge is still there."""
    return Path(f"/sys/class/net/{BRIDGE}").exists()


def remove_network() -> None:
    """Delete the network namespaces CNI made for pods, and the bridge."""
    if NETNS_DIR.is_dir():
        for netns in NETNS_DIR.glob("cni-*"):
            subprocess.run(["ip", "netns", "delete", netns.name], capture_output=True, check=False)
            netns.unlink(missing_ok=True)
    if bridge_exists():
        subprocess.run(["ip", "link", "delete", BRIDGE], check=True, capture_output=True)


def remove_cgroups() -> None:
    """Rmdir the node's cgroups, leaves first (a cgroup dir only goes once it is empty)."""
    for directory in list(_cgroup_dirs()):
        with contextlib.suppress(FileNotFoundError):
            directory.rmdir()


def _state_paths(paths: NodePaths) -> list[Path]:
    # The node's own logs stay for a post-mortem; they hold no mounts and no sockets.
    if not paths.root.is_dir():
        return []
    return [child for child in paths.root.iterdir() if child != paths.logs]


def remove_paths(paths: NodePaths) -> None:
    """Delete the fixed host paths and the node's state (but for its logs)."""
    for path in (*FIXED_PATHS, *_state_paths(paths)):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def cleanup(paths: NodePaths) -> None:
    """Everything above, in the order that lets each step succeed."""
    kill_containers(paths.containerd_socket)
    unmount_all(paths)
    remove_network()
    remove_cgroups()
    remove_paths(paths)


def leftovers(paths: NodePaths) -> list[str]:
    """What of the node is still on the machine (empty once `cleanup` has run)."""
    found = []
    if pids := cgroup_pids() | shim_pids(paths.containerd_socket):
        found.append(f"processes {sorted(pids)}")
    if points := mounts_under(node_mount_prefixes(paths)):
        found.append(f"mounts {points}")
    if bridge_exists():
        found.append(f"bridge {BRIDGE}")
    if cgroups := list(_cgroup_dirs()):
        found.append(f"cgroups {[str(c) for c in cgroups[:5]]}")
    found.extend(f"path {p}" for p in (*FIXED_PATHS, *_state_paths(paths)) if p.exists())
    return found
