"""`/scale` during a phased rollout: the operator follows the new count and never fights it.

An HPA or a KEDA ScaledObject writes `spec.replicas` through the scale subresource whenever the
backlog says so, including in the middle of a rollout. kagent's controller writes replicas back
(kagent #1844); ours must take the new count as the user's, keep the rollout's step (the canary
count stays what the step allows), and finish the rollout at the new size.
"""

from __future__ import annotations

import json
from functools import partial
from typing import Any

import redis

from harness import Fleets, Kubectl, start_fleet
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.core import naming
from rollouts import SLOW_PHASED, newfuse_rollout, rollout_of


def revisions(fleets: Fleets, name: str) -> dict[str, int]:
    counts: dict[str, int] = {}
    for pod in fleets.pods(name):
        if pod.metadata.deletion_timestamp is None:
            rev = pod.metadata.labels[naming.LABEL_REVISION]
            counts[rev] = counts.get(rev, 0) + 1
    return counts


def test_scale_changes_mid_rollout_are_honoured_without_losing_the_step(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_client: redis.Redis,
    kubectl: Kubectl,
) -> None:
    ns = fleets.namespace
    start_fleet(fleets, pod_runner, redis_client, "elastic", 4, rollout=SLOW_PHASED)
    fleets.patch_spec("elastic", image="newfuse/agent:0.2.0")
    wait_for(lambda: rollout_of(fleets, "elastic").get("phase") == "Analyzing", 90, what="canary")
    rollout = rollout_of(fleets, "elastic")
    stable, canary = rollout["stableRevision"], rollout["canaryRevision"]
    started = rollout["history"][0]

    def shape(total: int) -> bool:
        return revisions(fleets, "elastic") == {stable: total - 1, canary: 1}

    for replicas in (7, 3):  # the autoscaler's word, through /scale, mid-rollout
        kubectl("scale", "-n", ns, "nfa/elastic", f"--replicas={replicas}")
        wait_for(partial(shape, replicas), 90, what=f"{replicas} agents, one of them canary")
        body: dict[str, Any] = fleets.get("elastic")
        assert body["spec"]["replicas"] == replicas, "the operator never writes replicas back"
        now = rollout_of(fleets, "elastic")
        assert (now["stage"], now["canaryAgents"], now["canaryRevision"]) == (
            "Initial", 1, canary,
        )  # fmt: skip
        assert now["history"][0] == started, "the rollout went on; it did not start over"
    scale = json.loads(kubectl("get", "-n", ns, "nfa/elastic", "--subresource=scale", "-o", "json"))
    assert scale["spec"]["replicas"] == 3

    newfuse_rollout(kubectl, "promote", "elastic", "-n", ns, "--full")
    wait_for(lambda: rollout_of(fleets, "elastic").get("phase") == "Completed", 120, what="done")
    wait_for(lambda: revisions(fleets, "elastic") == {canary: 3}, 90, what="3 agents, all new")
    assert fleets.get("elastic")["spec"]["replicas"] == 3
