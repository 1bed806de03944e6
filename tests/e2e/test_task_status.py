"""spec.tasks at admission, status.backlog and fleet totals, on the real cluster, Redis and agents.

The must-show: with an agent restarted mid-run, status.metrics.tasksCompleted never decreases
(an agent's own counters start again from 0 when its process restarts; the fleet's do not).
"""

from __future__ import annotations

import itertools
import os
import signal
import threading
from typing import Any

import orjson
import pytest
import redis

from harness import (
    Fleets,
    Kubectl,
    OperatorProcess,
    RedisHandle,
    agent_state,
    agents_of,
    metric_value,
    start_fleet,
    submit,
)
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.api.v1alpha1 import GROUP, VERSION
from newfuse.wire.keys import FleetKeys

# Short claims, so the killed agent's tasks are taken over in seconds (default 30 s).
FAST_TASKS = {"claimIdleSeconds": 2, "leaseRenewSeconds": 0.5}
pytestmark = pytest.mark.usefixtures("operator")


def _manifest(name: str, tasks: str) -> str:
    return (
        f"apiVersion: {GROUP}/{VERSION}\nkind: NewFuseAgent\nmetadata:\n  name: {name}\n"
        f"spec:\n  image: a\n  replicas: 0\n  tasks:\n{tasks}"
    )


INVALID_TASKS = {
    "zero timeout": ("    timeoutSeconds: 0\n", "spec.tasks.timeoutSeconds"),
    "timeout above a day": ("    timeoutSeconds: 86401\n", "spec.tasks.timeoutSeconds"),
    "negative claim": ("    claimIdleSeconds: -1\n", "spec.tasks.claimIdleSeconds"),
    "tiny result stream": ("    resultStreamMaxLen: 99\n", "spec.tasks.resultStreamMaxLen"),
    "huge payload": ("    maxPayloadBytes: 67108865\n", "spec.tasks.maxPayloadBytes"),
    "unknown field": ("    timeout: 5\n", "spec.tasks.timeout"),
    # The cross-field rules (CEL), with the defaults standing in for unset fields.
    "renew more than half the claim": (
        "    claimIdleSeconds: 10\n    leaseRenewSeconds: 6\n",
        "spec.tasks.leaseRenewSeconds",
    ),
    "default renew against a short claim": (
        "    claimIdleSeconds: 19\n",
        "spec.tasks.leaseRenewSeconds",
    ),
    "retry base above max": (
        "    retryBaseSeconds: 20\n    retryMaxSeconds: 10\n",
        "spec.tasks.retryBaseSeconds",
    ),
    "retry max below the default base": (
        "    retryMaxSeconds: 1.5\n",
        "spec.tasks.retryBaseSeconds",
    ),
}


@pytest.mark.parametrize(("tasks", "field"), INVALID_TASKS.values(), ids=INVALID_TASKS.keys())
def test_invalid_spec_tasks_is_rejected_naming_the_field(
    kubectl: Kubectl, namespace: str, tasks: str, field: str
) -> None:
    doc = _manifest("bad", tasks)
    result = kubectl.run("apply", "-n", namespace, "-f", "-", stdin=doc)
    assert result.returncode != 0, f"accepted: {doc}"
    assert field in result.stderr, result.stderr


def test_valid_spec_tasks_is_accepted_and_reaches_the_pod_env(
    kubectl: Kubectl, fleets: Fleets, namespace: str
) -> None:
    # Whole numbers in number fields, and every field set at its edge.
    tasks = (
        "    timeoutSeconds: 86400\n    claimIdleSeconds: 20\n    leaseRenewSeconds: 10\n"
        "    retryBaseSeconds: 5\n    retryMaxSeconds: 5\n    resultTTLSeconds: 60\n"
        "    resultStreamMaxLen: 100\n    deadLetterMaxLen: 10\n    maxPayloadBytes: 1024\n"
        "    maxClockSkewSeconds: 0.5\n"
    )
    kubectl("apply", "-n", namespace, "-f", "-", stdin=_manifest("edge", tasks))
    fleets.patch_spec("edge", replicas=1)
    fleets.wait_available("edge", 1)
    (pod,) = fleets.pods("edge")
    env = {e.name: e.value for e in pod.spec.containers[0].env}
    assert env["NEWFUSE_TASK_TIMEOUT_SECONDS"] == "86400"
    assert env["NEWFUSE_CLAIM_IDLE_SECONDS"] == "20"
    assert env["NEWFUSE_RESULT_TTL_SECONDS"] == "60"
    assert env["NEWFUSE_MAX_CLOCK_SKEW_SECONDS"] == "0.5"
    assert env["NEWFUSE_RESULT_STREAM_MAX"] == "100"


def completed_by(client: redis.Redis, keys: FleetKeys, agent: str) -> int:
    """The agent's own cumulative count of completed tasks (0 before it reported)."""
    state = agent_state(client, keys, agent)
    return state.state.metrics.tasks_completed if state is not None else 0


def results_by_agent(client: redis.Redis, keys: FleetKeys) -> dict[str, int]:
    """How many stored results each agent produced."""
    counts: dict[str, int] = {}
    for raw in client.hvals(keys.result_index):
        agent = orjson.loads(raw)["payload"]["agent_id"]
        counts[agent] = counts.get(agent, 0) + 1
    return counts


def _column(kubectl: Kubectl, namespace: str, name: str, column: str) -> str:
    header, row = kubectl("get", "nfa", name, "-n", namespace).splitlines()[:2]
    return row.split()[header.split().index(column)]


def test_waiting_tasks_show_as_backlog_in_kubectl_status_and_metrics(
    fleets: Fleets,
    kubectl: Kubectl,
    namespace: str,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
    operator: OperatorProcess,
) -> None:
    fleets.create("idle", replicas=0)
    keys = FleetKeys(namespace, "idle")
    wait_for(lambda: redis_client.exists(keys.fleet_state), 30, what="the fleet mirrored to Redis")
    assert _column(kubectl, namespace, "idle", "BACKLOG") in ("0", "<none>")
    submit("idle", namespace, redis_server.url, "--count", "5", "--payload", '"wait"')
    submit("idle", namespace, redis_server.url, "--count", "2", "--priority", "high")

    def backlog() -> dict[str, Any] | None:
        found = fleets.get("idle").get("status", {}).get("backlog") or {}
        return found if found.get("waiting") == 7 else None

    first = wait_for(backlog, 30, what="status.backlog.waiting == 7")
    assert first["inflight"] == 0
    assert first["retrying"] == 0
    by_priority = {row["priority"]: row for row in first["byPriority"]}
    assert (by_priority["high"]["waiting"], by_priority["normal"]["waiting"]) == (2, 5)
    assert by_priority["low"]["waiting"] == 0
    assert _column(kubectl, namespace, "idle", "BACKLOG") == "7"
    started = first["oldestWaitingSeconds"]
    assert started is not None

    def grown() -> int | None:
        seen = (fleets.get("idle")["status"]["backlog"] or {}).get("oldestWaitingSeconds")
        return seen if seen is not None and seen >= started + 2 else None

    wait_for(grown, 30, what="oldestWaitingSeconds growing")
    text = operator.metrics()
    labels = f'fleet="idle",namespace="{namespace}"'
    assert metric_value(text, f'newfuse_fleet_backlog{{{labels},priority="normal"}}') == 5
    assert metric_value(text, f'newfuse_fleet_backlog{{{labels},priority="high"}}') == 2
    assert (
        metric_value(text, f'newfuse_fleet_oldest_waiting_seconds{{{labels},priority="normal"}}')
        >= 2
    )


def test_agent_restarted_mid_run_tasks_completed_never_decreases(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
) -> None:
    ns, total = fleets.namespace, 240
    start_fleet(fleets, pod_runner, redis_client, "steady", 2, tasks=FAST_TASKS)
    keys = FleetKeys(ns, "steady")
    samples: list[int] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.is_set():
            metrics = (fleets.get("steady").get("status") or {}).get("metrics") or {}
            samples.append(int(metrics.get("tasksCompleted", 0)))
            stop.wait(0.1)

    sampler = threading.Thread(target=sample, name="status-sampler", daemon=True)
    sampler.start()
    try:
        submit("steady", ns, redis_server.url, "--count", str(total), "--handler", "sleep",
               "--payload", '{"seconds": 0.25}')  # fmt: skip
        # The status must already count the victim's work, or its restart could not lower it.
        wait_for(lambda: samples and samples[-1] >= 60, 60, what="status counting 60 tasks")
        finished = results_by_agent(redis_client, keys)
        victim = max(agents_of(pod_runner, ns), key=lambda a: finished.get(a.pod, 0))
        assert finished.get(victim.pod, 0) > 0, f"the victim finished tasks: {finished}"
        os.kill(victim.pid, signal.SIGKILL)
        wait_for(
            lambda: next(
                (
                    a
                    for a in agents_of(pod_runner, ns)
                    if a.pod == victim.pod and a.pid != victim.pid
                ),
                None,
            ),
            30,
            what="the killed agent restarted",
        )
        assert redis_client.hlen(keys.result_index) < total, "killed mid-run, not after it"
        wait_for(lambda: redis_client.hlen(keys.result_index) >= total, 120, what="all results")
        wait_for(lambda: samples[-1] == total, 60, what=f"status.metrics.tasksCompleted == {total}")
    finally:
        stop.set()
        sampler.join(timeout=10)
    drops = [(a, b) for a, b in itertools.pairwise(samples) if b < a]
    assert not drops, f"tasksCompleted went backwards: {drops[:5]} in {len(samples)} samples"
    assert len(set(samples)) > 3, f"sampled while tasks flowed: {sorted(set(samples))}"
    # The restarted agent counted from 0 again: the sum of the agents' own counters fell short.
    agents_sum = sum(completed_by(redis_client, keys, a.pod) for a in agents_of(pod_runner, ns))
    assert agents_sum < total, f"the agents' own sum ({agents_sum}) lost the killed process' work"
    status = fleets.get("steady")["status"]
    assert status["metrics"]["tasksCompleted"] == total
    assert status["metrics"]["duplicateExecutions"] >= 0

    def drained() -> bool:
        backlog = fleets.get("steady")["status"].get("backlog") or {}
        return backlog.get("waiting") == 0 and backlog.get("inflight") == 0

    wait_for(drained, 30, what="the backlog empty again")
