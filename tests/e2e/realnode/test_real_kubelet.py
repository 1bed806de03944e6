"""The kubelet acts on our agents: SIGTERM on delete, liveness probe, memory limit, back-off.

kwok cannot show any of it: only a kubelet sends the signal and runs the probes, only a kernel
enforces a memory limit. Each scenario has its own fleet and runs with the defaults users get
(termination grace 30 s, drain grace 25 s, probe periods 5 s and 10 s). They run concurrently
in one test because each one waits on kubelet timers, not on the CPU: one after the other they
would add a minute and a half to every CI run.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import traceback
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import redis

from harness import Fleets, Kubectl, OperatorProcess, RedisHandle, on_real_node, submit
from localcluster import images, wait_for
from localcluster.realnode import RealNodeInfo
from newfuse.api.v1alpha1 import Reason
from newfuse.wire.keys import FleetKeys
from newfuse.wire.tasks import CONSUMER_GROUP, Priority


@dataclass(frozen=True)
class Scene:
    """What every scenario needs: the namespace's fleets and tools, and the agent image."""

    fleets: Fleets
    kubectl: Kubectl
    redis_url: str
    redis: redis.Redis
    node: RealNodeInfo
    agent_image: str

    @property
    def ns(self) -> str:
        return self.fleets.namespace

    def start(self, name: str, **spec: Any) -> Any:
        """A one-agent fleet on the real node, Available; its pod."""
        self.fleets.create(name, replicas=1, **on_real_node(self.agent_image, **spec))
        self.fleets.wait_available(name, 1, timeout=120)
        (pod,) = [p for p in self.fleets.pods(name) if p.metadata.deletion_timestamp is None]
        return pod

    def events(self, pod: str) -> str:
        return self.kubectl(
            "get", "events", "-n", self.ns, "--field-selector", f"involvedObject.name={pod}"
        )


def drain_on_delete(scene: Scene) -> None:
    """`kubectl delete pod`: SIGTERM, Ready=False while draining, no task lost."""
    pod = scene.start("drain", concurrency=2)
    name, keys = pod.metadata.name, FleetKeys(scene.ns, "drain")
    # One task ends inside the drain grace (25 s); the other cannot, so it must be handed back.
    for task_id, seconds in (("short", 18), ("long", 32)):
        submit("drain", scene.ns, scene.redis_url, "--id", task_id, "--handler", "sleep",
               "--payload", json.dumps({"seconds": seconds}))  # fmt: skip
    stream = keys.tasks(Priority.NORMAL)
    wait_for(
        lambda: len(scene.redis.xpending_range(stream, CONSUMER_GROUP, "-", "+", 10)) == 2,
        60, what="both tasks claimed by the agent",
    )  # fmt: skip
    scene.kubectl("delete", "pod", "-n", scene.ns, name, "--wait=false")

    def ready_false_while_running() -> bool:
        live = scene.fleets.core.read_namespaced_pod(name, scene.ns)
        (status,) = live.status.container_statuses or []
        ready = next(c.status for c in live.status.conditions if c.type == "Ready")
        return ready == "False" and status.state.running is not None

    wait_for(ready_false_while_running, 25, what="Ready=False while the agent still drains")
    wait_for(lambda: scene.redis.hexists(keys.result_index, "short"), 40, what="short done")
    short = json.loads(str(scene.redis.hget(keys.result_index, "short")))["payload"]
    assert (short["status"], short["agent_id"]) == ("succeeded", name), "finished in the drain"

    # The replacement pod has the same name (one per ordinal): tell them apart by UID.
    def replaced() -> bool:
        live = scene.fleets.core.list_namespaced_pod(
            scene.ns, field_selector=f"metadata.name={name}"
        ).items
        return bool(live) and live[0].metadata.uid != pod.metadata.uid

    wait_for(replaced, 60, what="the drained pod gone and its replacement created")
    replaced_at = dt.datetime.now(dt.UTC)
    wait_for(lambda: scene.redis.hexists(keys.result_index, "long"), 120, what="long done")
    long = json.loads(str(scene.redis.hget(keys.result_index, "long")))["payload"]
    assert long["status"] == "succeeded"
    finished = dt.datetime.fromisoformat(long["finished_at"])
    assert finished > replaced_at, "handed back, then finished by the replacement pod"
    assert long["attempts"] == 1, "a hand-back is not a failed attempt"
    assert "Killing" in scene.events(name)


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


def liveness_restart(scene: Scene) -> None:
    """A hung agent (SIGSTOP from the host: its own PID namespace may not stop its init)."""
    pod = scene.start("hang")
    (status,) = pod.status.container_statuses or []
    os.kill(_container_pid(scene.node, status.container_id), signal.SIGSTOP)

    def restarted() -> Any:
        live = scene.fleets.core.read_namespaced_pod(pod.metadata.name, scene.ns)
        (now,) = live.status.container_statuses or []
        return now if now.restart_count >= 1 and now.ready else None

    now = wait_for(restarted, 120, what="a liveness restart, then Ready again")
    assert now.last_state.terminated is not None
    assert "Liveness probe failed" in scene.events(pod.metadata.name)


def _degraded(fleets: Fleets, name: str) -> dict[str, Any] | None:
    status = fleets.get(name).get("status") or {}
    degraded = next((c for c in status.get("conditions", []) if c["type"] == "Degraded"), None)
    if status.get("phase") == "Degraded" and degraded and degraded["status"] == "True":
        return dict(degraded)
    return None


def oom_killed(scene: Scene) -> None:
    """Over its memory limit: OOMKilled, Degraded naming the limit, healed by raising it."""
    # The agent's interpreter and libraries alone need more than this.
    tight = {"requests": {"memory": "24Mi"}, "limits": {"memory": "24Mi"}}
    scene.fleets.create("hungry", replicas=1, **on_real_node(scene.agent_image, resources=tight))
    degraded = wait_for(lambda: _degraded(scene.fleets, "hungry"), 120, what="Degraded (OOM)")
    assert degraded["reason"] == Reason.PODS_OOM_KILLED, degraded
    assert "OOMKilled" in degraded["message"]
    assert "spec.resources.limits.memory" in degraded["message"], "says what to change"
    (pod,) = scene.fleets.pods("hungry")
    (status,) = pod.status.container_statuses or []
    assert (status.last_state.terminated.reason, status.last_state.terminated.exit_code) == (
        "OOMKilled", 137,
    )  # fmt: skip
    # Raising the limit, as the message says, heals the fleet: the new revision's agent runs
    # (its phased rollout then waits for canary tasks, as any rollout does).
    roomy = {"requests": {"memory": "128Mi"}, "limits": {"memory": "256Mi"}}
    scene.fleets.patch_spec("hungry", resources=roomy)

    def healed() -> bool:
        conditions = {c["type"]: c for c in scene.fleets.get("hungry")["status"]["conditions"]}
        pods = [p for p in scene.fleets.pods("hungry") if p.metadata.deletion_timestamp is None]
        return (
            conditions["Degraded"]["status"] == "False"
            and conditions["Available"]["status"] == "True"
            and [s.ready for p in pods for s in p.status.container_statuses or []] == [True]
        )

    wait_for(healed, 180, what="Degraded=False and the roomier agent Ready")


def crash_loop(scene: Scene) -> None:
    """An agent that refuses its configuration (fault rate above 1) and exits at start-up."""
    bad_env = [{"name": "NEWFUSE_FAULT_RATE", "value": "7"}]
    scene.fleets.create("crashy", replicas=1, **on_real_node(scene.agent_image, env=bad_env))
    degraded = wait_for(lambda: _degraded(scene.fleets, "crashy"), 120, what="Degraded (crash)")
    assert degraded["reason"] == Reason.PODS_CRASH_LOOPING, degraded
    assert "CrashLoopBackOff" in degraded["message"]
    assert "exit code" in degraded["message"]
    assert "kubectl logs --previous crashy-" in degraded["message"]


SCENARIOS: tuple[Callable[[Scene], None], ...] = (
    drain_on_delete,
    liveness_restart,
    oom_killed,
    crash_loop,
)


def test_the_kubelet_drains_restarts_oom_kills_and_backs_off_and_the_fleet_shows_it(
    real_images: images.ImageSet,
    real_node: RealNodeInfo,
    real_namespace: str,
    fleets: Fleets,
    operator: OperatorProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
    kubectl: Kubectl,
) -> None:
    scene = Scene(fleets, kubectl, redis_server.url, redis_client, real_node, real_images.agent)
    with ThreadPoolExecutor(len(SCENARIOS)) as pool:
        running = {fn.__name__: pool.submit(fn, scene) for fn in SCENARIOS}
    failed = {name: f.exception() for name, f in running.items() if f.exception() is not None}
    for name, error in failed.items():
        print(f"--- {name} ---")
        traceback.print_exception(error, file=sys.stdout)
    assert not failed, f"scenarios failed (tracebacks above): {sorted(failed)}"
