"""The real node's config files say what this machine needs (see localcluster/nodeconfig.py).

Each setting checked here made the trial fail without it; a refactor that drops one would only
show on a real node, minutes into a run.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

from localcluster.nodeconfig import (
    BRIDGE,
    POD_GATEWAY,
    TAINT_KEY,
    NodePaths,
    cni_conflist,
    containerd_config,
    kubelet_config,
)

PATHS = NodePaths(Path("/state/realnode"))


def test_containerd_keeps_its_state_under_the_node_and_restricts_oom_scores() -> None:
    config = tomllib.loads(containerd_config(PATHS, "docker.io/newfuse/pause:abc"))
    assert config["version"] == 2
    assert config["root"].startswith("/state/realnode/")
    assert config["state"].startswith("/state/realnode/")
    assert config["grpc"]["address"] == str(PATHS.containerd_socket)
    cri = config["plugins"]["io.containerd.grpc.v1.cri"]
    assert cri["sandbox_image"] == "docker.io/newfuse/pause:abc", "no registry: a local pause"
    assert cri["restrict_oom_score_adj"] is True, "root lacks CAP_SYS_RESOURCE here"
    assert cri["containerd"]["runtimes"]["runc"]["options"]["SystemdCgroup"] is False
    assert cri["cni"]["conf_dir"] == str(PATHS.cni_conf_dir)


def test_the_kubelet_runs_on_cgroup_v1_without_negative_oom_scores_and_is_tainted() -> None:
    config = kubelet_config(PATHS, healthz_port=10248)
    assert (config["failCgroupV1"], config["cgroupDriver"]) == (False, "cgroupfs")
    assert config["oomScoreAdj"] == 0
    assert config["failSwapOn"] is False
    assert config["containerRuntimeEndpoint"] == f"unix://{PATHS.containerd_socket}"
    assert config["registerWithTaints"] == [
        {"key": TAINT_KEY, "value": "true", "effect": "NoSchedule"}
    ]
    assert config["podLogsDir"].startswith("/state/realnode/")


def test_the_pod_network_is_our_bridge_with_addresses_kept_under_the_node() -> None:
    (bridge,) = cni_conflist(PATHS)["plugins"]
    assert bridge["bridge"] == BRIDGE
    (subnet,) = bridge["ipam"]["ranges"][0]
    assert subnet["gateway"] == POD_GATEWAY
    assert bridge["ipam"]["dataDir"] == str(PATHS.cni_ipam_dir), "not the fixed /var/lib/cni"
