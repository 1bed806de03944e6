"""Start and stop a real, RBAC-enforcing Kubernetes control plane on 127.0.0.1.

Components (each a local process on a free port): etcd, kube-apiserver (token auth, RBAC),
kube-controller-manager (garbage collection, Deployments, service accounts), kube-scheduler, and
kwok, which plays the kubelet for a few fake nodes so pods get scheduled, become Running/Ready and
are really deleted. Everything is kept under one state directory; `up` reuses a healthy cluster.
"""

from __future__ import annotations

import json
import secrets
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from localcluster import pki, processes, realnode
from localcluster.binaries import REPO_ROOT, Binaries
from localcluster.netutil import ApiClient, free_port
from localcluster.waiting import wait_for

KWOK_NODE_ANNOTATION = "kwok.x-k8s.io/node"
COMPONENTS = ("etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok")
SERVICE_CIDR = "10.96.0.0/16"
# Roomy enough for the benchmarks' thousands of single-replica fleets.
PODS_PER_NODE = 5000
Log = Callable[[str], None]


@dataclass(frozen=True)
class ClusterInfo:
    """How to reach a running local cluster."""

    state_dir: Path
    kubeconfig: Path
    server: str
    nodes: tuple[str, ...]
    reused: bool


def default_state_dir() -> Path:
    """`.local/cluster` in the repository unless NEWFUSE_STATE_DIR says otherwise."""
    import os

    return Path(os.environ.get("NEWFUSE_STATE_DIR", REPO_ROOT / ".local")) / "cluster"


def _kubeconfig(server: str, ca_file: Path, user: str, token: str) -> dict[str, Any]:
    cluster = {"server": server, "certificate-authority": str(ca_file)}
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "newfuse-local", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [
            {"name": "newfuse-local", "context": {"cluster": "newfuse-local", "user": user}}
        ],
        "current-context": "newfuse-local",
    }


def _fake_node(name: str) -> dict[str, Any]:
    resources = {"cpu": "64", "memory": "512Gi", "pods": str(PODS_PER_NODE)}
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "name": name,
            "annotations": {KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0"},
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
                "type": "kwok",
            },
        },
        "status": {
            "allocatable": resources,
            "capacity": resources,
            "nodeInfo": {
                "architecture": "amd64",
                "operatingSystem": "linux",
                "kubeletVersion": "v0",
            },
        },
    }


class LocalCluster:
    """The control plane recorded in ``state_dir``."""

    def __init__(
        self, state_dir: Path | None = None, node_count: int = 3, log: Log = print
    ) -> None:
        """Manage the cluster whose state lives in ``state_dir``."""
        self.state_dir = state_dir or default_state_dir()
        self.node_count = node_count
        self._log = log
        self._state_file = self.state_dir / "state.json"
        self.kubeconfig = self.state_dir / "kubeconfig"

    # -- state ---------------------------------------------------------------------------------

    def _load(self) -> dict[str, Any]:
        if not self._state_file.exists():
            return {}
        return dict(json.loads(self._state_file.read_text()))

    def _records(self, state: dict[str, Any]) -> list[processes.ProcessRecord]:
        return [processes.ProcessRecord.from_json(r) for r in state.get("processes", [])]

    def _client(self, state: dict[str, Any]) -> ApiClient:
        return ApiClient(state["server"], state["admin_token"], Path(state["ca_file"]))

    def running(self) -> ClusterInfo | None:
        """Info of the recorded cluster if every process runs and the apiserver is ready."""
        state = self._load()
        records = self._records(state)
        if len(records) != len(COMPONENTS) or not all(processes.is_running(r) for r in records):
            return None
        if not self._client(state).ok("/readyz"):
            return None
        return ClusterInfo(
            self.state_dir, self.kubeconfig, state["server"], tuple(state["nodes"]), reused=True
        )

    def pids(self) -> list[int]:
        """PIDs of recorded processes that still run, the real node's too (for leak checks)."""
        own = [r.pid for r in self._records(self._load()) if processes.is_running(r)]
        return own + self.real_node().pids()

    # -- lifecycle -----------------------------------------------------------------------------

    def up(
        self, binaries: Binaries | None = None, timeout: float = 120.0, *, real_node: bool = False
    ) -> ClusterInfo:
        """Start the cluster, or return the healthy one already recorded.

        ``real_node``: also start the real node (one per machine: only the main cluster's).
        """
        current = self.running()
        if current is not None:
            self._log(f"cluster already running at {current.server}")
        else:
            self.down(quiet=True)
            binaries = binaries or Binaries.ensure(link_dir=self.state_dir.parent / "bin")
            current = self._start_retrying(binaries, timeout)
        if real_node:
            self.real_node_up(binaries, timeout)
        return current

    def _start_retrying(self, binaries: Binaries, timeout: float, attempts: int = 3) -> ClusterInfo:
        # A port found free can be taken by another process before a component binds it (other
        # clusters, Redis servers and pod processes choose ports on this machine at the same
        # time): such a start-up is retried on fresh ports, any other failure is not.
        for attempt in range(1, attempts + 1):
            try:
                return self._start(binaries, timeout)
            except RuntimeError as exc:
                self.down(quiet=True)
                if "address already in use" not in str(exc) or attempt == attempts:
                    raise
                self._log(f"[yellow]a port was taken during start-up[/]; retry {attempt}")
            except BaseException:
                # Never leave half a control plane running: stop whatever this attempt started.
                self.down(quiet=True)
                raise
        raise AssertionError("unreachable")

    def real_node(self) -> realnode.RealNode:
        """The real node beside this cluster (running or not)."""
        return realnode.RealNode(self.state_dir.parent / "realnode", log=self._log)

    def real_node_up(
        self, binaries: Binaries | None = None, timeout: float = 120.0
    ) -> realnode.RealNodeInfo | None:
        """Start the real node if this machine can run one; None (and why, logged) if not."""
        node = self.real_node()
        if (running := node.running()) is not None:
            return running
        state = self._load()
        kubelet = (binaries or Binaries.ensure(link_dir=self.state_dir.parent / "bin")).kubelet
        reason = realnode.unavailable(kubelet)
        if reason is None and "node_token" not in state:
            reason = "this control plane predates the real node: run `make cluster-down` once"
        if reason is not None:
            node.record_unavailable(reason)
            self._log(f"[yellow]no real node[/]: {reason}; every pod stays on kwok")
            return None
        from localcluster import images

        info = node.up(
            self._client(state), state["server"], Path(state["ca_file"]), state["node_token"],
            kubelet, images.pause_image_ref(), timeout,
        )  # fmt: skip
        images.ensure_pause(info.containerd_socket, self._log)
        return info

    def _start(self, binaries: Binaries, timeout: float) -> ClusterInfo:
        started_at = time.monotonic()
        shutil.rmtree(self.state_dir, ignore_errors=True)
        self.state_dir.mkdir(parents=True)
        logs = self.state_dir / "logs"

        certs = pki.generate(self.state_dir / "pki")
        ports = {
            name: free_port()
            for name in ("etcd", "etcd-peer", "apiserver", "kcm", "scheduler", "kwok")
        }
        tokens = {user: secrets.token_hex(16) for user in ("admin", "kcm", "scheduler", "node")}
        # The real node's kubelet is system:node:<hostname>, which the Node authorizer knows.
        (self.state_dir / "tokens.csv").write_text(
            f'{tokens["admin"]},newfuse-admin,uid-admin,"system:masters"\n'
            f"{tokens['kcm']},system:kube-controller-manager,uid-kcm\n"
            f"{tokens['scheduler']},system:kube-scheduler,uid-scheduler\n"
            f'{tokens["node"]},system:node:{realnode.node_name()},uid-node,"system:nodes"\n'
        )
        server = f"https://127.0.0.1:{ports['apiserver']}"
        kubeconfigs = {
            "admin": self.kubeconfig,
            "kcm": self.state_dir / "kube-controller-manager.kubeconfig",
            "scheduler": self.state_dir / "kube-scheduler.kubeconfig",
        }
        for user, path in kubeconfigs.items():
            name = {"admin": "newfuse-admin", "kcm": "system:kube-controller-manager"}.get(
                user, "system:kube-scheduler"
            )
            path.write_text(yaml.safe_dump(_kubeconfig(server, certs.ca_cert, name, tokens[user])))
            path.chmod(0o600)

        state: dict[str, Any] = {
            "server": server,
            "ca_file": str(certs.ca_cert),
            "admin_token": tokens["admin"],
            "node_token": tokens["node"],
            "ports": ports,
            "nodes": [f"kwok-node-{i}" for i in range(self.node_count)],
            "processes": [],
        }

        def launch(name: str, argv: list[str]) -> None:
            self._log(f"starting {name}")
            record = processes.start(name, argv, logs / f"{name}.log")
            state["processes"].append(record.to_json())
            self._state_file.write_text(json.dumps(state, indent=2))

        def check_alive() -> bool:
            # Fail fast with the component's log instead of waiting out a deadline.
            for record in self._records(state):
                if not processes.is_running(record):
                    tail = Path(record.log).read_text(errors="replace")[-2000:]
                    raise RuntimeError(f"{record.name} exited during start-up; log tail:\n{tail}")
            return True

        etcd_url = f"http://127.0.0.1:{ports['etcd']}"
        peer_url = f"http://127.0.0.1:{ports['etcd-peer']}"
        launch("etcd", [
            str(binaries.etcd),
            "--name=default",
            f"--data-dir={self.state_dir / 'etcd'}",
            f"--listen-client-urls={etcd_url}",
            f"--advertise-client-urls={etcd_url}",
            f"--listen-peer-urls={peer_url}",
            f"--initial-advertise-peer-urls={peer_url}",
            f"--initial-cluster=default={peer_url}",
            # Throwaway test data: trading durability for speed is the point.
            "--unsafe-no-fsync",
            "--quota-backend-bytes=8589934592",
            "--log-level=warn",
        ])  # fmt: skip
        launch("kube-apiserver", [
            str(binaries.kube_apiserver),
            f"--etcd-servers={etcd_url}",
            "--bind-address=127.0.0.1",
            "--advertise-address=127.0.0.1",
            f"--secure-port={ports['apiserver']}",
            f"--cert-dir={self.state_dir / 'pki'}",
            f"--tls-cert-file={certs.serving_cert}",
            f"--tls-private-key-file={certs.serving_key}",
            f"--client-ca-file={certs.ca_cert}",
            f"--token-auth-file={self.state_dir / 'tokens.csv'}",
            # Node: the real node's kubelet may read only what its own pods use.
            "--authorization-mode=Node,RBAC",
            # Logs and exec reach the real node's kubelet through its eth0 address.
            "--kubelet-preferred-address-types=InternalIP,Hostname",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local",
            f"--service-account-key-file={certs.service_account_pub}",
            f"--service-account-signing-key-file={certs.service_account_key}",
            # The default/kubernetes Endpoints may not point at loopback; nothing here needs it.
            "--endpoint-reconciler-type=none",
            "--allow-privileged=true",
            "--profiling=false",
        ])  # fmt: skip
        admin = self._client(state)

        def answers(path: str) -> Callable[[], bool]:
            return lambda: check_alive() and admin.ok(path)

        wait_for(answers("/readyz"), timeout, what="kube-apiserver /readyz")
        self._log(f"kube-apiserver ready at {server} ({time.monotonic() - started_at:.1f}s)")

        launch("kube-controller-manager", [
            str(binaries.kube_controller_manager),
            f"--kubeconfig={kubeconfigs['kcm']}",
            f"--authentication-kubeconfig={kubeconfigs['kcm']}",
            f"--authorization-kubeconfig={kubeconfigs['kcm']}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['kcm']}",
            f"--cert-dir={self.state_dir / 'pki' / 'kcm'}",
            "--leader-elect=false",
            "--use-service-account-credentials=true",
            f"--service-account-private-key-file={certs.service_account_key}",
            f"--root-ca-file={certs.ca_cert}",
            f"--service-cluster-ip-range={SERVICE_CIDR}",
        ])  # fmt: skip
        launch("kube-scheduler", [
            str(binaries.kube_scheduler),
            f"--kubeconfig={kubeconfigs['scheduler']}",
            f"--authentication-kubeconfig={kubeconfigs['scheduler']}",
            f"--authorization-kubeconfig={kubeconfigs['scheduler']}",
            "--bind-address=127.0.0.1",
            f"--secure-port={ports['scheduler']}",
            f"--cert-dir={self.state_dir / 'pki' / 'scheduler'}",
            "--leader-elect=false",
        ])  # fmt: skip
        stages = sorted((binaries.kwok.parent / "stages").glob("*.yaml"))
        if not stages:
            raise FileNotFoundError(f"no kwok stages next to {binaries.kwok}: re-run build.sh")
        launch("kwok", [
            str(binaries.kwok),
            *(f"--config={stage}" for stage in stages),
            f"--kubeconfig={self.kubeconfig}",
            "--manage-all-nodes=false",
            f"--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake",
            f"--server-address=127.0.0.1:{ports['kwok']}",
            "--node-ip=127.0.0.1",
            "--cidr=10.0.0.0/12",
            "--node-lease-duration-seconds=40",
        ])  # fmt: skip

        for node in state["nodes"]:
            admin.request("POST", "/api/v1/nodes", _fake_node(node))

        def nodes_ready() -> bool:
            check_alive()
            items = admin.request("GET", "/api/v1/nodes")["items"]
            ready = {
                n["metadata"]["name"]
                for n in items
                for c in n.get("status", {}).get("conditions", [])
                if c["type"] == "Ready" and c["status"] == "True"
            }
            return ready >= set(state["nodes"])

        wait_for(nodes_ready, timeout, what="kwok nodes Ready")
        default_sa = "/api/v1/namespaces/default/serviceaccounts/default"
        wait_for(
            answers(default_sa),
            timeout,
            what="serviceaccount default/default (kube-controller-manager)",
        )
        self._log(
            f"cluster up in {time.monotonic() - started_at:.1f}s, "
            f"{len(state['nodes'])} Ready fake nodes"
        )
        nodes = tuple(state["nodes"])
        return ClusterInfo(self.state_dir, self.kubeconfig, server, nodes, reused=False)

    def down(self, *, quiet: bool = False) -> list[str]:
        """Stop the real node, then every recorded process (reverse start order).

        Returns the names stopped.
        """
        stopped = self.real_node().down(quiet=quiet)
        for record in reversed(self._records(self._load())):
            if processes.is_running(record):
                processes.stop(record)
                stopped.append(record.name)
        if stopped and not quiet:
            self._log(f"stopped {', '.join(stopped)}")
        return stopped
