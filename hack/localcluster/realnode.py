"""One real node beside the kwok nodes: containerd, runc and a kubelet running real containers.

kwok nodes only pretend: a pod there is a local process started by the pod runner, so nothing
checks the Dockerfile, the restricted security context, the probes, SIGTERM delivery or memory
limits. This node runs the project's own images as real containers, for the tests and the demo
that need one. It is tainted (`newfuse.io/real-node`), so only pods that tolerate the taint land
on it, and the kwok nodes keep serving the scale tests.

It needs root, cgroup v1 (this machine's), Debian's containerd, runc and CNI plugins, and the
kubelet built by build.sh. Where any is missing, `unavailable()` says which, and the cluster
starts without it: the tests that need it skip with that reason.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import socket
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

from localcluster import nodeclean, processes
from localcluster.netutil import ApiClient
from localcluster.nodeconfig import (
    BRIDGE,
    NODE_LABEL,
    NODE_LABEL_VALUE,
    POD_GATEWAY,
    POD_SUBNET,
    NodePaths,
    write_all,
)
from localcluster.waiting import wait_for

Log = Callable[[str], None]
REQUIRED_COMMANDS: Final = ("containerd", "runc", "ctr", "ip", "umount")
KUBELET_HEALTHZ_PORT: Final = 10248
KUBELET_PORT: Final = 10250


@dataclass(frozen=True)
class RealNodeInfo:
    """A running real node: its name, and how pods reach the host."""

    name: str
    ip: str
    containerd_socket: Path
    pod_gateway: str = POD_GATEWAY


def node_name() -> str:
    """The machine's hostname, as the kubelet registers it (it must resolve here)."""
    return socket.gethostname().lower()


def node_ip() -> str:
    """The first global IPv4 address: the kubelet's --node-ip may not be loopback."""
    out = subprocess.run(
        ["ip", "-j", "-4", "addr", "show", "scope", "global"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    for link in json.loads(out):
        for addr in link.get("addr_info", []):
            return str(addr["local"])
    raise RuntimeError("no global IPv4 address for the kubelet's --node-ip")


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def unavailable(kubelet: Path | None) -> str | None:
    """Why a real node cannot start on this machine, or None if it can."""
    if os.environ.get("NEWFUSE_REAL_NODE", "") in ("0", "false", "off"):
        return "NEWFUSE_REAL_NODE is off"
    if os.geteuid() != 0:
        return "a real node needs root (the kubelet and containerd run as root)"
    missing = [c for c in REQUIRED_COMMANDS if shutil.which(c) is None]
    if missing:
        return f"missing {', '.join(missing)}: apt-get install containerd runc (make deps does)"
    if not Path("/usr/lib/cni/bridge").exists():
        return "no CNI plugins: apt-get install containernetworking-plugins (make deps does)"
    if not (nodeclean.CGROUP_ROOT / "memory").is_dir():
        return "no cgroup v1 memory hierarchy: this node is set up for cgroup v1 only"
    if kubelet is None or not kubelet.exists():
        return "no kubelet binary: hack/localcluster/build.sh kubelet"
    return None


class RealNode:
    """The real node recorded under ``paths.root``."""

    def __init__(self, state_dir: Path, log: Log = print) -> None:
        """Manage the node whose state lives in ``state_dir``."""
        self.paths = NodePaths(state_dir)
        self._log = log
        self._state_file = state_dir / "logs" / "state.json"

    def _load(self) -> dict[str, Any]:
        if not self._state_file.exists():
            return {}
        return dict(json.loads(self._state_file.read_text()))

    def _records(self) -> list[processes.ProcessRecord]:
        return [processes.ProcessRecord.from_json(r) for r in self._load().get("processes", [])]

    def record_unavailable(self, reason: str) -> None:
        """Remember why the node did not start, for `unavailable_reason` (the tests' skip)."""
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        self._state_file.write_text(json.dumps({"unavailable": reason, "processes": []}))

    def unavailable_reason(self) -> str | None:
        """Why the last start did not happen, if it did not."""
        reason = self._load().get("unavailable")
        return str(reason) if reason else None

    def running(self) -> RealNodeInfo | None:
        """The node's info if containerd and the kubelet both run."""
        state, records = self._load(), self._records()
        if len(records) != 2 or not all(processes.is_running(r) for r in records):
            return None
        return RealNodeInfo(state["name"], state["ip"], self.paths.containerd_socket)

    def pids(self) -> list[int]:
        """PIDs of the node's processes that still run (for leak checks)."""
        return [r.pid for r in self._records() if processes.is_running(r)]

    def up(
        self, api: ApiClient, server: str, ca_file: Path, token: str, kubelet: Path,
        sandbox_image: str, timeout: float = 120.0,
    ) -> RealNodeInfo:  # fmt: skip
        """Start containerd and the kubelet (unless running) and wait for the Node to be Ready."""
        current = self.running()
        if current is not None:
            return current
        self.down(quiet=True)
        started = time.monotonic()
        name, ip = node_name(), node_ip()
        for port in (KUBELET_PORT, KUBELET_HEALTHZ_PORT):
            if not _port_free(port):
                raise RuntimeError(f"port {port} is taken: another kubelet runs on this machine")
        write_all(
            self.paths, sandbox_image=sandbox_image, server=server, ca_file=ca_file,
            node=name, token=token, healthz_port=KUBELET_HEALTHZ_PORT,
        )  # fmt: skip
        self._make_bridge()
        state: dict[str, Any] = {"name": name, "ip": ip, "processes": []}
        try:
            self._start(
                state, "containerd", ["containerd", "--config", str(self.paths.containerd_config)]
            )
            wait_for(self._containerd_answers, timeout, what="containerd's socket")
            self._start(state, "kubelet", [
                str(kubelet),
                f"--config={self.paths.kubelet_config}",
                f"--kubeconfig={self.paths.kubelet_kubeconfig}",
                f"--root-dir={self.paths.kubelet_root}",
                f"--node-ip={ip}",
                f"--node-labels={NODE_LABEL}={NODE_LABEL_VALUE}",
                "--v=1",
            ])  # fmt: skip
            # A Node object from an earlier start may still say Ready: wait for a fresh heartbeat.
            since = dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=1)
            wait_for(lambda: self._ready(api, name, since), timeout, what=f"{name} Ready")
        except BaseException:
            self.down(quiet=True)
            raise
        self._log(f"real node {name} ({ip}) Ready in {time.monotonic() - started:.1f}s")
        return RealNodeInfo(name, ip, self.paths.containerd_socket)

    def _start(self, state: dict[str, Any], name: str, argv: list[str]) -> None:
        argv = [shutil.which(argv[0]) or argv[0], *argv[1:]]
        record = processes.start(name, argv, self.paths.logs / f"{name}.log")
        state["processes"].append(record.to_json())
        self._state_file.parent.mkdir(parents=True, exist_ok=True)
        self._state_file.write_text(json.dumps(state, indent=2))

    def _check_alive(self) -> None:
        for record in self._records():
            if not processes.is_running(record):
                tail = Path(record.log).read_text(errors="replace")[-2000:]
                raise RuntimeError(f"{record.name} exited during start-up; log tail:\n{tail}")

    def _containerd_answers(self) -> bool:
        self._check_alive()
        result = subprocess.run(
            ["ctr", "--address", str(self.paths.containerd_socket), "version"],
            capture_output=True, check=False,
        )  # fmt: skip
        return result.returncode == 0

    def _ready(self, api: ApiClient, name: str, since: dt.datetime) -> bool:
        self._check_alive()
        if not api.ok(f"/api/v1/nodes/{name}"):
            return False
        node = api.request("GET", f"/api/v1/nodes/{name}")
        conditions = (node.get("status") or {}).get("conditions") or []
        return any(
            c["type"] == "Ready"
            and c["status"] == "True"
            and dt.datetime.fromisoformat(c["lastHeartbeatTime"]) >= since
            for c in conditions
        )

    def _make_bridge(self) -> None:
        # Made before the first pod (CNI would make it then) so that Redis can bind the pod
        # gateway address at start-up; the bridge plugin adopts an existing bridge.
        if nodeclean.bridge_exists():
            return
        prefix = POD_SUBNET.split("/")[1]
        for argv in (
            ["ip", "link", "add", BRIDGE, "type", "bridge"],
            ["ip", "addr", "add", f"{POD_GATEWAY}/{prefix}", "dev", BRIDGE],
            ["ip", "link", "set", BRIDGE, "up"],
        ):
            subprocess.run(argv, check=True, capture_output=True)

    def down(self, *, quiet: bool = False) -> list[str]:
        """Stop the kubelet, then containerd (by PID), and clean up what they leave behind.

        Only a node this state dir started is cleaned up: the cleanup is machine-wide (cgroups,
        fixed paths), and a throwaway cluster in another state dir must never touch the real
        node of the main one.
        """
        records = self._records()
        if not records:
            return []
        stopped = []
        for record in reversed(records):
            if processes.is_running(record):
                processes.stop(record, grace=20.0)
                stopped.append(record.name)
        nodeclean.cleanup(self.paths)
        self._state_file.write_text(json.dumps({"processes": []}))
        if stopped and not quiet:
            self._log(f"stopped the real node ({', '.join(stopped)}) and cleaned up after it")
        return stopped

    def leftovers(self) -> list[str]:
        """What of the node is still on the machine (for tests of `down`)."""
        return [f"pid {p}" for p in self.pids()] + nodeclean.leftovers(self.paths)
