"""Find (building on first use) the pinned control-plane binaries in the versioned cache."""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO_ROOT = HERE.parent.parent
BUILD_SCRIPT = HERE / "build.sh"


@dataclass(frozen=True)
class Binaries:
    """Absolute paths of every binary the local cluster runs."""

    etcd: Path
    kube_apiserver: Path
    kube_controller_manager: Path
    kube_scheduler: Path
    kubectl: Path
    kwok: Path
    helm: Path
    # The real node's kubelet (same pinned Kubernetes as the control plane).
    kubelet: Path

    @classmethod
    def ensure(cls, link_dir: Path | None = None) -> Binaries:
        """Run build.sh (a no-op when the cache is warm) and return the binaries' paths.

        build.sh's progress goes straight to the terminal; its last lines name the bin dirs.
        ``link_dir`` gets symlinks to kubectl and helm, so users have them on a short path.
        """
        out = subprocess.run(
            ["bash", str(BUILD_SCRIPT)], check=True, stdout=subprocess.PIPE, text=True
        ).stdout
        dirs = dict(line.split("=", 1) for line in out.splitlines() if "_BIN=" in line)
        k8s = Path(dirs["KUBERNETES_BIN"])
        binaries = cls(
            etcd=Path(dirs["ETCD_BIN"]) / "etcd",
            kube_apiserver=k8s / "kube-apiserver",
            kube_controller_manager=k8s / "kube-controller-manager",
            kube_scheduler=k8s / "kube-scheduler",
            kubectl=k8s / "kubectl",
            kwok=Path(dirs["KWOK_BIN"]) / "kwok",
            helm=Path(dirs["HELM_BIN"]) / "helm",
            kubelet=Path(dirs["KUBELET_BIN"]) / "kubelet",
        )
        if link_dir is not None:
            link_dir.mkdir(parents=True, exist_ok=True)
            for binary in (binaries.kubectl, binaries.helm):
                link = link_dir / binary.name
                link.unlink(missing_ok=True)
                link.symlink_to(binary)
        return binaries


def redis_server_binary() -> Path:
    """The Debian redis-server, or a clear error saying how to get it."""
    found = shutil.which("redis-server")
    if found is None:
        raise FileNotFoundError(
            "redis-server not found: run `apt-get install redis-server` (make deps does it as "
            "root), or point the tests at an existing Redis with NEWFUSE_REDIS_URL"
        )
    return Path(found)
