"""The real node's configuration files: containerd's, the kubelet's and the CNI network's.

Pure functions of a few paths and names, so a unit test can read what the node will run with.
Every setting that differs from upstream defaults is here because this machine needs it (see
`../shared/real-node.md` and the README's "Real node" section):

- cgroup v1 only: the kubelet refuses v1 unless `failCgroupV1: false`, and must use cgroupfs;
- root lacks CAP_SYS_RESOURCE, so negative OOM scores cannot be set: containerd restricts
  `oom_score_adj` and the kubelet keeps its own at 0, or every sandbox fails in runc;
- no registry: the sandbox (pause) image is a local one, imported before any pod starts;
- a throwaway single-user node: anonymous kubelet API with AlwaysAllow, no certificate rotation.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import yaml

# The pod network: a bridge of our own name (so cleanup never touches another tool's), and
# containerd's usual subnet, clear of kwok's 10.0.0.0/12 and the service range 10.96.0.0/16.
BRIDGE: Final = "nfbr0"
POD_SUBNET: Final = "10.88.0.0/16"
# The host's address on the bridge: pods reach host services (Redis) here, as they cannot reach
# the host's loopback and there is no kube-proxy for ClusterIP Services.
POD_GATEWAY: Final = "10.88.0.1"
CNI_BIN_DIR: Final = Path("/usr/lib/cni")
# Only pods that ask for the real node land there: the kwok nodes keep the scale tests.
TAINT_KEY: Final = "newfuse.io/real-node"
NODE_LABEL: Final = "newfuse.io/node"
NODE_LABEL_VALUE: Final = "real"


@dataclass(frozen=True)
class NodePaths:
    """Where one real node keeps its state (all under the local cluster's state directory)."""

    root: Path

    @property
    def containerd_root(self) -> Path:
        """Containerd's persistent data (content store, snapshots)."""
        return self.root / "containerd" / "root"

    @property
    def containerd_state(self) -> Path:
        """Containerd's runtime state."""
        return self.root / "containerd" / "state"

    @property
    def containerd_socket(self) -> Path:
        """Containerd's gRPC socket (the kubelet's CRI endpoint)."""
        return self.root / "containerd" / "containerd.sock"

    @property
    def containerd_config(self) -> Path:
        """Containerd's config file."""
        return self.root / "containerd" / "config.toml"

    @property
    def cni_conf_dir(self) -> Path:
        """Where containerd reads the CNI network config."""
        return self.root / "cni" / "net.d"

    @property
    def cni_ipam_dir(self) -> Path:
        """host-local IPAM's allocations (instead of the fixed /var/lib/cni)."""
        return self.root / "cni" / "ipam"

    @property
    def kubelet_root(self) -> Path:
        """The kubelet's --root-dir (it bind-mounts this onto itself)."""
        return self.root / "kubelet"

    @property
    def kubelet_config(self) -> Path:
        """The KubeletConfiguration file."""
        return self.root / "kubelet-config.yaml"

    @property
    def kubelet_kubeconfig(self) -> Path:
        """How the kubelet reaches the API server (as system:node:<name>)."""
        return self.root / "kubelet.kubeconfig"

    @property
    def pod_logs(self) -> Path:
        """Container logs (instead of the fixed /var/log/pods)."""
        return self.root / "pod-logs"

    @property
    def logs(self) -> Path:
        """Containerd's and the kubelet's own logs."""
        return self.root / "logs"


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    return json.dumps(str(value))


def _toml(tables: dict[str, dict[str, Any]]) -> str:
    # containerd's config is a few flat tables of scalars: a tiny writer beats a dependency.
    lines: list[str] = []
    for name, values in tables.items():
        if name:
            lines.append(f"\n[{name}]")
        lines.extend(f"{key} = {_toml_value(value)}" for key, value in values.items())
    return "\n".join(lines) + "\n"


CRI: Final = 'plugins."io.containerd.grpc.v1.cri"'


def containerd_config(paths: NodePaths, sandbox_image: str) -> str:
    """Containerd 1.6 config (version 2): state under ``paths``, CRI tuned for this machine."""
    return _toml(
        {
            "": {
                "version": 2,
                "root": str(paths.containerd_root),
                "state": str(paths.containerd_state),
                # Snapshotters this machine cannot use only add start-up noise.
                "disabled_plugins": [
                    "io.containerd.snapshotter.v1.aufs",
                    "io.containerd.snapshotter.v1.btrfs",
                    "io.containerd.snapshotter.v1.devmapper",
                    "io.containerd.snapshotter.v1.zfs",
                ],
            },
            "grpc": {"address": str(paths.containerd_socket)},
            CRI: {
                "sandbox_image": sandbox_image,
                "restrict_oom_score_adj": True,
                "enable_selinux": False,
            },
            f"{CRI}.containerd": {"snapshotter": "overlayfs", "default_runtime_name": "runc"},
            f"{CRI}.containerd.runtimes.runc": {"runtime_type": "io.containerd.runc.v2"},
            f"{CRI}.containerd.runtimes.runc.options": {"SystemdCgroup": False},
            f"{CRI}.cni": {"bin_dir": str(CNI_BIN_DIR), "conf_dir": str(paths.cni_conf_dir)},
        }
    )


def cni_conflist(paths: NodePaths) -> dict[str, Any]:
    """A bridge network with host-local addresses; no masquerade (no way out anyway)."""
    return {
        "cniVersion": "1.0.0",
        "name": "newfuse",
        "plugins": [
            {
                "type": "bridge",
                "bridge": BRIDGE,
                "isGateway": True,
                "ipMasq": False,
                "hairpinMode": True,
                "ipam": {
                    "type": "host-local",
                    "ranges": [[{"subnet": POD_SUBNET, "gateway": POD_GATEWAY}]],
                    "routes": [{"dst": "0.0.0.0/0"}],
                    "dataDir": str(paths.cni_ipam_dir),
                },
            }
        ],
    }


def kubelet_config(paths: NodePaths, healthz_port: int) -> dict[str, Any]:
    """KubeletConfiguration for a throwaway test node on cgroup v1."""
    return {
        "apiVersion": "kubelet.config.k8s.io/v1beta1",
        "kind": "KubeletConfiguration",
        "failCgroupV1": False,
        "cgroupDriver": "cgroupfs",
        "failSwapOn": False,
        "oomScoreAdj": 0,
        "containerRuntimeEndpoint": f"unix://{paths.containerd_socket}",
        "authentication": {
            "anonymous": {"enabled": True},
            "webhook": {"enabled": False},
        },
        "authorization": {"mode": "AlwaysAllow"},
        "address": "0.0.0.0",  # noqa: S104 - the API server reaches logs/exec through the node IP
        "readOnlyPort": 0,
        "healthzBindAddress": "127.0.0.1",
        "healthzPort": healthz_port,
        "rotateCertificates": False,
        "serverTLSBootstrap": False,
        "serializeImagePulls": False,
        "podLogsDir": str(paths.pod_logs),
        # A shared dev disk: only evict when the machine is really out of room.
        "evictionHard": {
            "memory.available": "100Mi",
            "nodefs.available": "1%",
            "imagefs.available": "1%",
            "nodefs.inodesFree": "1%",
        },
        "imageGCHighThresholdPercent": 100,
        "imageGCLowThresholdPercent": 99,
        "registerWithTaints": [{"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}],
        "maxPods": 110,
        "resolvConf": "",
        "clusterDomain": "cluster.local",
    }


def kubelet_kubeconfig(server: str, ca_file: Path, node: str, token: str) -> dict[str, Any]:
    """A kubeconfig for the kubelet's identity, system:node:<node> (the Node authorizer's)."""
    user = f"system:node:{node}"
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [
            {"name": "local", "cluster": {"server": server, "certificate-authority": str(ca_file)}}
        ],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
        "current-context": "local",
    }


def write_all(
    paths: NodePaths, *, sandbox_image: str, server: str, ca_file: Path, node: str, token: str,
    healthz_port: int,
) -> None:  # fmt: skip
    """Write every config file of the node."""
    for directory in (paths.containerd_config.parent, paths.cni_conf_dir, paths.logs):
        directory.mkdir(parents=True, exist_ok=True)
    paths.containerd_config.write_text(containerd_config(paths, sandbox_image))
    (paths.cni_conf_dir / "10-newfuse.conflist").write_text(json.dumps(cni_conflist(paths)))
    paths.kubelet_config.write_text(yaml.safe_dump(kubelet_config(paths, healthz_port)))
    paths.kubelet_kubeconfig.write_text(
        yaml.safe_dump(kubelet_kubeconfig(server, ca_file, node, token))
    )
    paths.kubelet_kubeconfig.chmod(0o600)
