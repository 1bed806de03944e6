"""Real container failures reach the fleet's status as Degraded, with a reason to act on.

kwok cannot produce them: only a kernel enforces a memory limit, and only a kubelet backs off a
container that keeps exiting.
"""

from __future__ import annotations

from typing import Any

from harness import Fleets, OperatorProcess, on_real_node
from localcluster import images, wait_for
from localcluster.realnode import RealNodeInfo
from newfuse.api.v1alpha1 import Reason


def _degraded(fleets: Fleets, name: str) -> dict[str, Any] | None:
    status = fleets.get(name).get("status") or {}
    degraded = next((c for c in status.get("conditions", []) if c["type"] == "Degraded"), None)
    if status.get("phase") == "Degraded" and degraded and degraded["status"] == "True":
        return dict(degraded)
    return None


def test_an_agent_over_its_memory_limit_is_oom_killed_and_the_fleet_says_so(
    real_images: images.ImageSet,
    real_node: RealNodeInfo,
    real_namespace: str,
    fleets: Fleets,
    operator: OperatorProcess,
) -> None:
    # The agent's interpreter and libraries alone need more than this.
    limits = {"requests": {"memory": "24Mi"}, "limits": {"memory": "24Mi"}}
    fleets.create("hungry", replicas=1, **on_real_node(real_images.agent, resources=limits))
    degraded = wait_for(lambda: _degraded(fleets, "hungry"), 120, what="Degraded (OOMKilled)")
    assert degraded["reason"] == Reason.PODS_OOM_KILLED, degraded
    assert "OOMKilled" in degraded["message"]
    assert "spec.resources.limits.memory" in degraded["message"], "says what to change"
    (pod,) = fleets.pods("hungry")
    (status,) = pod.status.container_statuses or []
    assert status.last_state.terminated.reason == "OOMKilled"
    assert status.last_state.terminated.exit_code == 137

    # Raising the limit, as the message says, heals the fleet: the new revision's agent runs
    # (its phased rollout then waits for canary tasks, as any rollout does).
    roomy = {"requests": {"memory": "128Mi"}, "limits": {"memory": "256Mi"}}
    fleets.patch_spec("hungry", resources=roomy)

    def healed() -> bool:
        conditions = {c["type"]: c for c in fleets.get("hungry")["status"]["conditions"]}
        pods = [p for p in fleets.pods("hungry") if p.metadata.deletion_timestamp is None]
        return (
            conditions["Degraded"]["status"] == "False"
            and conditions["Available"]["status"] == "True"
            and [s.ready for p in pods for s in p.status.container_statuses or []] == [True]
        )

    wait_for(healed, 180, what="Degraded=False and the roomier agent Ready")


def test_a_crash_looping_agent_is_degraded_with_its_exit_and_where_to_look(
    real_images: images.ImageSet,
    real_node: RealNodeInfo,
    real_namespace: str,
    fleets: Fleets,
    operator: OperatorProcess,
) -> None:
    # A configuration the agent refuses at start-up (fault rate above 1): it exits at once.
    bad_env = [{"name": "NEWFUSE_FAULT_RATE", "value": "7"}]
    fleets.create("crashy", replicas=1, **on_real_node(real_images.agent, env=bad_env))
    degraded = wait_for(lambda: _degraded(fleets, "crashy"), 120, what="Degraded (crash loop)")
    assert degraded["reason"] == Reason.PODS_CRASH_LOOPING, degraded
    assert "CrashLoopBackOff" in degraded["message"]
    assert "exit code" in degraded["message"]
    assert "kubectl logs --previous crashy-" in degraded["message"]
