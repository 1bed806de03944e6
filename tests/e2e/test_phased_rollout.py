"""Phased rollouts end to end: operator, pod runner, real agent processes, real task traffic."""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest
import redis
from kubernetes import client as k8s_client

from harness import FAST_AGENT_ENV, Fleets, Kubectl, RedisHandle, start_fleet
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.adapters.taskclient import TaskClient, TaskSpec
from newfuse.core import naming
from newfuse.wire.keys import FleetKeys

# Short soaks and small gates so a whole rollout fits in a test; the logic is the same.
FAST_PHASED: dict[str, Any] = {
    "strategy": "Phased",
    "initial": {"soakSeconds": 1, "gate": {"minTasks": 5, "minSuccessRate": 0.9}},
    "gradual": {"step": 1, "intervalSeconds": 1, "gate": {"minTasks": 5, "minSuccessRate": 0.9}},
    "progressDeadlineSeconds": 120,
}


class Traffic:
    """Submits echo tasks at a steady pace from a thread until stopped; remembers every id."""

    def __init__(self, redis_url: str, namespace: str, fleet: str, per_second: int = 60) -> None:
        self.redis_url, self.namespace, self.fleet, self.per_second = (
            redis_url,
            namespace,
            fleet,
            per_second,
        )
        self.ids: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._run()), daemon=True)

    async def _run(self) -> None:
        client = TaskClient.from_url(self.redis_url, self.namespace, self.fleet)
        try:
            while not self._stop.is_set():
                batch = [TaskSpec("echo", i) for i in range(self.per_second // 10)]
                async for done in client.submit_many(batch):
                    self.ids += [s.task_id for s in done]
                await asyncio.sleep(0.1)
        finally:
            await client.aclose()

    def __enter__(self) -> Traffic:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


@pytest.fixture
def fleets(k8s_api: k8s_client.ApiClient, namespace: str) -> Fleets:
    return Fleets(k8s_api, namespace)


def rollout_of(fleets: Fleets, name: str) -> dict[str, Any]:
    return (fleets.get(name).get("status") or {}).get("rollout") or {}


def every_task_accounted_for(client: redis.Redis, keys: FleetKeys, ids: list[str]) -> None:
    """Each submitted task has exactly one final result (failed ones are also dead-lettered)."""
    wait_for(
        lambda: client.hlen(keys.result_index) >= len(ids), 90, what=f"{len(ids)} final results"
    )
    results = [fields["task_id"] for _, fields in client.xrange(keys.result_stream)]
    assert sorted(results) == sorted(ids), (
        "every task has exactly one result, none lost, none doubled"
    )


def test_good_revision_walks_every_phase_and_retires_the_legacy_revision(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
) -> None:
    ns = fleets.namespace
    body = start_fleet(fleets, pod_runner, redis_client, "canary", 6, rollout=FAST_PHASED)
    old = body["status"]["updateRevision"]
    keys = FleetKeys(ns, "canary")
    with Traffic(redis_server.url, ns, "canary") as traffic:
        fleets.patch_spec("canary", image="newfuse/agent:0.2.0")
        done = wait_for(
            lambda: (
                rollout_of(fleets, "canary").get("phase") == "Completed"
                and rollout_of(fleets, "canary")
            ),
            240,
            what="the rollout to complete",
        )
    new = done["canaryRevision"]
    assert new != old
    assert done["stableRevision"] == new
    history = done["history"]
    steps = [
        (h["stage"], h["canaryAgents"])
        for h in history
        if h["reason"] in ("RolloutStarted", "StepStarted")
    ]
    assert steps == [
        ("Initial", 1),
        ("Gradual", 2),
        ("Gradual", 3),
        ("Gradual", 4),
        ("Gradual", 5),
        ("Full", 6),
    ]
    gates = [h for h in history if h["reason"] == "GatePassed"]
    assert len(gates) == 5, "one gate after phase 1 and after every phase-2 step"
    assert all(g["verdict"]["measured"]["tasks"] >= 5 for g in gates)
    assert history[-1]["reason"] == "RolloutCompleted"
    fleets.wait_available("canary", 6)
    assert {p.metadata.labels[naming.LABEL_REVISION] for p in fleets.pods("canary")} == {new}

    def legacy_gone() -> bool:
        records = [json.loads(v) for v in redis_client.hvals(keys.agents)]
        return not [r for r in records if r["state"].get("revision") == old]

    wait_for(legacy_gone, 60, what="the legacy revision's registrations removed")
    every_task_accounted_for(redis_client, keys, traffic.ids)


def test_bad_revision_fails_the_phase_one_gate_and_rolls_back_losing_nothing(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
    kubectl: Kubectl,
) -> None:
    ns = fleets.namespace
    body = start_fleet(fleets, pod_runner, redis_client, "risky", 3, rollout=FAST_PHASED)
    stable = body["status"]["updateRevision"]
    keys = FleetKeys(ns, "risky")
    with Traffic(redis_server.url, ns, "risky") as traffic:
        fleets.patch_spec(
            "risky", env=[*FAST_AGENT_ENV, {"name": "NEWFUSE_FAULT_RATE", "value": "0.5"}]
        )
        rolled = wait_for(
            lambda: (
                rollout_of(fleets, "risky").get("phase") == "RolledBack"
                and rollout_of(fleets, "risky")
            ),
            120,
            what="an automatic rollback",
        )
        wait_for(
            lambda: (
                {p.metadata.labels[naming.LABEL_REVISION] for p in fleets.pods("risky")} == {stable}
                and len(fleets.live_pod_names("risky")) == 3
            ),
            60,
            what="every agent back on the stable revision",
        )
    assert rolled["stage"] == "Initial", "phase 1's gate caught it"
    verdict = rolled["lastVerdict"]
    assert verdict["result"] == "Failed"
    assert verdict["measured"]["errorRate"] == pytest.approx(0.5, abs=0.1)
    status = fleets.get("risky")["status"]
    degraded = {c["type"]: c for c in status["conditions"]}["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "RolledBack")
    assert "success rate" in degraded["message"]
    events = json.loads(kubectl("get", "events", "-n", ns, "-o", "json"))["items"]
    rollback_events = [e for e in events if e["reason"] == "RolledBack"]
    assert rollback_events, "an Event says why"
    assert "%" in rollback_events[0]["message"]
    every_task_accounted_for(redis_client, keys, traffic.ids)
