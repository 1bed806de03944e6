"""Agents as real containers under a real kubelet, from the images our Dockerfile builds.

What kwok and the pod runner cannot show: the image starts and works under the restricted
security context the operator writes, and the agents reach Redis from the pod network. What the
kubelet does to them (signals, probes, limits) is in test_real_kubelet.py.
"""

from __future__ import annotations

import json
import os
import subprocess
from typing import Any

import redis

from harness import (
    NEWFUSE_CLI,
    Fleets,
    Kubectl,
    OperatorProcess,
    RedisHandle,
    on_real_node,
    submit,
    wait_results,
)
from localcluster import images, wait_for
from localcluster.realnode import RealNodeInfo
from newfuse.wire.keys import FleetKeys

# Run inside the container: what the process may do, read from the kernel, not from the spec.
INSIDE = r"""
import json, os
def status(pid):
    fields = (line.split(":\t", 1) for line in open(f"/proc/{pid}/status").read().splitlines())
    return {k: v.strip() for k, v in (f for f in fields if len(f) == 2)}
def writable(path):
    try:
        with open(path, "w") as out:
            out.write("x")
        return True
    except OSError:
        return False
agent = status(1)
print(json.dumps({
    "uid": [int(agent["Uid"].split()[0]), os.getuid()],
    "gid": int(agent["Gid"].split()[0]),
    "cap_eff": agent["CapEff"], "cap_prm": agent["CapPrm"], "cap_bnd": agent["CapBnd"],
    "seccomp": agent["Seccomp"], "no_new_privs": agent["NoNewPrivs"],
    "root_writable": writable("/probe"), "venv_writable": writable("/opt/venv/probe"),
    "tmp_writable": writable("/tmp/probe"), "home": os.environ.get("HOME"),
}))
"""


def _pods(fleets: Fleets, name: str) -> list[Any]:
    return [p for p in fleets.pods(name) if p.metadata.deletion_timestamp is None]


def test_a_fleet_on_the_real_node_works_end_to_end_under_the_restricted_context(
    real_images: images.ImageSet,
    real_node: RealNodeInfo,
    real_namespace: str,
    fleets: Fleets,
    operator: OperatorProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
    kubectl: Kubectl,
) -> None:
    ns = real_namespace
    fleets.create("real", replicas=2, **on_real_node(real_images.agent))
    fleets.wait_available("real", 2, timeout=120)
    pods = _pods(fleets, "real")
    assert {p.spec.node_name for p in pods} == {real_node.name}
    for pod in pods:
        (status,) = pod.status.container_statuses or []
        assert status.container_id.startswith("containerd://"), "a real container, not kwok's"
        assert status.image.endswith(real_images.agent.split("/", 1)[-1])
    wide = kubectl("get", "pods", "-n", ns, "-o", "wide")
    assert all(f" {real_node.name} " in line for line in wide.splitlines()[1:]), wide

    out = submit("real", ns, redis_server.url, "--count", "40", "--payload", '{"n": 1}')
    assert "submitted 40 task(s)" in out
    keys = FleetKeys(ns, "real")
    wait_for(lambda: redis_client.hlen(keys.result_index) >= 40, 90, what="40 results")
    workers = {json.loads(v)["payload"]["agent_id"] for v in redis_client.hvals(keys.result_index)}
    assert workers == {p.metadata.name for p in pods}, "both containers took tasks"

    def reported() -> bool:
        metrics = fleets.get("real")["status"].get("metrics") or {}
        return bool(metrics.get("tasksCompleted") == 40 and metrics.get("reportingAgents") == 2)

    wait_for(reported, 60, what="both agents' heartbeats and 40 tasks in status.metrics")
    env = {**os.environ, "NEWFUSE_REDIS_URL": redis_server.url, "NO_COLOR": "1", "COLUMNS": "200"}
    listed = subprocess.run(
        [NEWFUSE_CLI, "agents", "real", "-n", ns],
        capture_output=True, text=True, check=True, timeout=60, env=env,
    ).stdout  # fmt: skip
    for pod in pods:
        assert pod.metadata.name in listed, listed
    _memory_inside(ns, redis_server.url)
    _restricted_inside(kubectl, ns, pods[0].metadata.name)


def _memory_inside(ns: str, url: str) -> None:
    """Fleet memory works in the real image: its packaged model loads under a read-only root."""
    text = "Orders ship from the Lyon warehouse."
    remember = json.dumps({"text": text})
    submit("real", ns, url, "--handler", "remember", "--id", "m1", "--payload", remember)
    [stored] = wait_results(url, ns, "real", ["m1"], 120)
    assert stored.status.value == "succeeded", stored.error
    recall = json.dumps({"query": "Where do orders ship from?", "k": 1})
    submit("real", ns, url, "--handler", "recall", "--id", "r1", "--payload", recall)
    [found] = wait_results(url, ns, "real", ["r1"], 120)
    assert found.status.value == "succeeded", found.error
    assert [m["text"] for m in found.output["memories"]] == [text]


def _restricted_inside(kubectl: Kubectl, ns: str, pod: str) -> None:
    """The restricted security context holds, read from the kernel inside the container."""
    seen = json.loads(kubectl("exec", "-n", ns, pod, "--", "python", "-c", INSIDE))
    no_caps = "0000000000000000"
    assert seen["uid"] == [65532, 65532], "the agent and an exec both run as 65532"
    assert seen["gid"] == 65532
    assert (seen["cap_eff"], seen["cap_prm"], seen["cap_bnd"]) == (no_caps, no_caps, no_caps)
    assert seen["seccomp"] == "2", "seccomp filter mode (RuntimeDefault)"
    assert seen["no_new_privs"] == "1", "allowPrivilegeEscalation: false"
    assert (seen["root_writable"], seen["venv_writable"]) == (False, False), "read-only root"
    assert seen["tmp_writable"] is True, "the /tmp emptyDir is the one writable place"
    assert seen["home"] == "/tmp"  # noqa: S108 - the image's HOME, on the emptyDir
