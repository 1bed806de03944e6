"""Agents as real containers under a real kubelet, from the images our Dockerfiles build.

What kwok and the pod runner cannot show: the image starts under the restricted security context
the operator writes, the kubelet delivers SIGTERM and the agent drains, the kubelet acts on the
agent's probes, and the agents reach Redis from the pod network.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
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
)
from localcluster import images, wait_for
from localcluster.realnode import RealNodeInfo
from newfuse.wire.keys import FleetKeys
from newfuse.wire.tasks import CONSUMER_GROUP, Priority

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


def _container_pid(node: RealNodeInfo, container_id: str) -> int:
    """The host PID of a container's main process, as containerd reports it."""
    out = subprocess.run(
        ["ctr", "--address", str(node.containerd_socket), "-n", "k8s.io", "tasks", "ls"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    for line in out.splitlines()[1:]:
        task, pid, _ = line.split()
        if task == container_id.removeprefix("containerd://"):
            return int(pid)
    raise AssertionError(f"containerd has no task for {container_id}")


def test_a_fleet_on_the_real_node_takes_tasks_heartbeats_and_is_listed(
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


def test_the_restricted_security_context_holds_inside_the_container(
    real_images: images.ImageSet,
    real_node: RealNodeInfo,
    real_namespace: str,
    fleets: Fleets,
    operator: OperatorProcess,
    kubectl: Kubectl,
) -> None:
    fleets.create("locked", replicas=1, **on_real_node(real_images.agent))
    fleets.wait_available("locked", 1, timeout=120)
    (pod,) = _pods(fleets, "locked")
    seen = json.loads(
        kubectl("exec", "-n", real_namespace, pod.metadata.name, "--", "python", "-c", INSIDE)
    )
    no_caps = "0000000000000000"
    assert seen["uid"] == [65532, 65532], "the agent and an exec both run as 65532"
    assert seen["gid"] == 65532
    assert (seen["cap_eff"], seen["cap_prm"], seen["cap_bnd"]) == (no_caps, no_caps, no_caps)
    assert seen["seccomp"] == "2", "seccomp filter mode (RuntimeDefault)"
    assert seen["no_new_privs"] == "1", "allowPrivilegeEscalation: false"
    assert (seen["root_writable"], seen["venv_writable"]) == (False, False), "read-only root"
    assert seen["tmp_writable"] is True, "the /tmp emptyDir is the one writable place"
    assert seen["home"] == "/tmp"  # noqa: S108 - the image's HOME, on the emptyDir


def test_delete_pod_sigterm_drains_readiness_drops_and_no_task_is_lost(
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
    # Default drain grace (25 s) inside the default termination grace (30 s).
    fleets.create("drain", replicas=1, concurrency=2, **on_real_node(real_images.agent))
    fleets.wait_available("drain", 1, timeout=120)
    (pod,) = _pods(fleets, "drain")
    name = pod.metadata.name
    keys = FleetKeys(ns, "drain")
    # One task ends inside the drain grace; the other cannot, so it must be handed back.
    for task_id, seconds in (("short", 18), ("long", 40)):
        submit("drain", ns, redis_server.url, "--id", task_id, "--handler", "sleep",
               "--payload", json.dumps({"seconds": seconds}))  # fmt: skip
    stream = keys.tasks(Priority.NORMAL)
    wait_for(
        lambda: len(redis_client.xpending_range(stream, CONSUMER_GROUP, "-", "+", 10)) == 2,
        60, what="both tasks claimed by the agent",
    )  # fmt: skip
    kubectl("delete", "pod", "-n", ns, name, "--wait=false")

    def ready_false_while_running() -> bool:
        live = fleets.core.read_namespaced_pod(name, ns)
        (status,) = live.status.container_statuses or []
        ready = next(c.status for c in live.status.conditions if c.type == "Ready")
        return ready == "False" and status.state.running is not None

    wait_for(ready_false_while_running, 25, what="Ready=False while the agent still drains")
    wait_for(lambda: redis_client.hexists(keys.result_index, "short"), 40, what="short done")
    short = json.loads(str(redis_client.hget(keys.result_index, "short")))["payload"]
    assert (short["status"], short["agent_id"]) == ("succeeded", name), "finished in the drain"
    # The replacement pod has the same name (one per ordinal): tell them apart by UID.
    old_uid = pod.metadata.uid

    def replaced() -> bool:
        live = fleets.core.list_namespaced_pod(ns, field_selector=f"metadata.name={name}").items
        return bool(live) and live[0].metadata.uid != old_uid

    wait_for(replaced, 60, what="the drained pod gone and its replacement created")
    replaced_at = dt.datetime.now(dt.UTC)
    wait_for(lambda: redis_client.hexists(keys.result_index, "long"), 150, what="long done")
    long = json.loads(str(redis_client.hget(keys.result_index, "long")))["payload"]
    assert long["status"] == "succeeded"
    finished = dt.datetime.fromisoformat(long["finished_at"])
    assert finished > replaced_at, "handed back, then finished by the replacement pod"
    assert long["attempts"] == 1, "a hand-back is not a failed attempt"
    events = kubectl("get", "events", "-n", ns, "--field-selector", f"involvedObject.name={name}")
    assert "Killing" in events, events


def test_the_kubelet_restarts_a_hung_agent_on_its_liveness_probe(
    real_images: images.ImageSet,
    real_node: RealNodeInfo,
    real_namespace: str,
    fleets: Fleets,
    operator: OperatorProcess,
    kubectl: Kubectl,
) -> None:
    fleets.create("hang", replicas=1, **on_real_node(real_images.agent))
    fleets.wait_available("hang", 1, timeout=120)
    (pod,) = _pods(fleets, "hang")
    (status,) = pod.status.container_statuses or []
    # A hung agent: the process exists but answers nothing (SIGSTOP from the host, as the
    # container's own PID namespace may not stop its init).
    os.kill(_container_pid(real_node, status.container_id), signal.SIGSTOP)

    def restarted() -> Any:
        live = fleets.core.read_namespaced_pod(pod.metadata.name, real_namespace)
        (now,) = live.status.container_statuses or []
        return now if now.restart_count >= 1 and now.ready else None

    now = wait_for(restarted, 120, what="a liveness restart, then Ready again")
    assert now.last_state.terminated is not None
    events = kubectl(
        "get", "events", "-n", real_namespace,
        "--field-selector", f"involvedObject.name={pod.metadata.name}",
    )  # fmt: skip
    assert "Liveness probe failed" in events or "failed liveness probe" in events, events
