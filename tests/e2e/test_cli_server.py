"""`newfuse --server`: the CLI through the gateway, run as a user runs it, with no Redis URL at all.

The CLI's environment has no NEWFUSE_REDIS_URL and no signing key: whatever it does, it does
through the gateway's A2A endpoint and live feed, as the ServiceAccount whose token it holds.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
import redis
import yaml

from gatewayproc import GatewayProcess
from harness import NEWFUSE_CLI, Fleets, start_fleet
from localcluster.podrunner import PodRunnerProcess

pytestmark = pytest.mark.usefixtures("operator")


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("NEWFUSE_") and k not in ("KUBECONFIG",)
    }
    return subprocess.run(
        [NEWFUSE_CLI, *args], capture_output=True, text=True, timeout=120, check=False,
        env={**clean, "NO_COLOR": "1", "COLUMNS": "200", **env},
    )  # fmt: skip


def _kubeconfig(path: Path, server: str, token: str) -> Path:
    """A kubeconfig whose user is the ServiceAccount's token, as `kubectl config` writes one."""
    path.write_text(
        yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "sa",
            "clusters": [{"name": "c", "cluster": {"server": server}}],
            "users": [{"name": "sa", "user": {"token": token}}],
            "contexts": [{"name": "sa", "context": {"cluster": "c", "user": "sa"}}],
        })
    )  # fmt: skip
    return path


def test_the_cli_submits_waits_and_lists_agents_through_the_gateway(
    gateway: GatewayProcess,
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_client: redis.Redis,
    submitter: str,
    viewer: str,
    tmp_path: Path,
) -> None:
    ns = fleets.namespace
    start_fleet(fleets, pod_runner, redis_client, "remote", 2, capabilities=["echo"])
    common = ["--server", gateway.url]

    sent = _cli(*common, "--token", submitter, "task", "submit", "remote", "-n", ns,
                "-p", '{"n": 7}', "--id", "cli-1", "--wait")  # fmt: skip
    assert sent.returncode == 0, sent.stderr
    result = json.loads(sent.stdout[sent.stdout.index("{") :])
    assert result["status"] == "succeeded"
    assert result["output"] == {"n": 7}
    assert result["agent_id"].startswith("remote-")
    task_id = result["task_id"]

    kubeconfig = _kubeconfig(tmp_path / "kubeconfig", "https://127.0.0.1:1", viewer)
    got = _cli(*common, "task", "get", "remote", task_id, "-n", ns, "--json",
               NEWFUSE_KUBECONFIG=str(kubeconfig))  # fmt: skip
    assert got.returncode == 0, got.stderr
    assert json.loads(got.stdout)["task_id"] == task_id

    listed = _cli(*common, "agents", "remote", "-n", ns, NEWFUSE_TOKEN=viewer)
    assert listed.returncode == 0, listed.stderr
    assert listed.stdout.count("remote-") == 2, listed.stdout

    refused = _cli(*common, "task", "submit", "remote", "-n", ns, NEWFUSE_TOKEN=viewer)
    assert refused.returncode == 1
    assert "may not create" in refused.stderr, refused.stderr
    missing = _cli(*common, "agents", "no-such", "-n", ns, NEWFUSE_TOKEN=viewer)
    assert missing.returncode == 1
    assert "not found" in missing.stderr
    redis_only = _cli(*common, "task", "watch", "remote", "-n", ns, NEWFUSE_TOKEN=viewer)
    assert redis_only.returncode == 1
    assert "without --server" in redis_only.stderr
