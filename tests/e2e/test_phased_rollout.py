"""Phased rollouts end to end: operator, pod runner, real agent processes, real task traffic."""

from __future__ import annotations

import json
import signal
import threading
from typing import Any

import pytest
import redis
from kubernetes import client as k8s_client

from harness import FAST_AGENT_ENV, Fleets, Kubectl, OperatorProcess, RedisHandle, start_fleet
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.core import naming
from newfuse.wire.keys import FleetKeys
from rollouts import (
    FAST_PHASED,
    SLOW_PHASED,
    Traffic,
    every_task_accounted_for,
    newfuse_rollout,
    rollout_of,
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
    assert len(gates) == 5, "one gate after stage 1 and after every stage-2 step"
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
    assert rolled["stage"] == "Initial", "stage 1's gate caught it"
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


class Sampler:
    """Samples a fleet's Ready agents (those with ``capability``, if given) every 50 ms."""

    def __init__(self, fleets: Fleets, name: str, capability: str | None = None) -> None:
        self.fleets, self.name, self.capability = fleets, name, capability
        self.minimum: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _ready(self) -> int:
        count = 0
        for pod in self.fleets.pods(self.name):
            labels = pod.metadata.labels or {}
            if pod.metadata.deletion_timestamp is not None:
                continue
            if self.capability and labels.get(naming.capability_label(self.capability)) != "true":
                continue
            conditions = pod.status.conditions or []
            count += any(c.type == "Ready" and c.status == "True" for c in conditions)
        return count

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            ready = self._ready()
            self.samples += 1
            self.minimum = ready if self.minimum is None else min(self.minimum, ready)

    def __enter__(self) -> Sampler:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)


def test_operator_killed_in_phase_two_resumes_the_same_step_within_budgets(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
    operator: OperatorProcess,
) -> None:
    policy = {**FAST_PHASED, "gradual": {"step": 1, "intervalSeconds": 3, "gate": {"minTasks": 5}}}
    start_fleet(fleets, pod_runner, redis_client, "sturdy", 6, rollout=policy)
    with (
        Traffic(redis_server.url, fleets.namespace, "sturdy"),
        Sampler(fleets, "sturdy") as sampler,
    ):
        fleets.patch_spec("sturdy", image="newfuse/agent:0.3.0")
        before = wait_for(
            lambda: (
                (r := rollout_of(fleets, "sturdy")).get("stage") == "Gradual"
                and r.get("step", 0) >= 2
                and r
            ),
            180,
            what="stage 2, step 2",
        )
        operator.kill(signal.SIGKILL)
        operator.start()
        done = wait_for(
            lambda: (
                rollout_of(fleets, "sturdy").get("phase") == "Completed"
                and rollout_of(fleets, "sturdy")
            ),
            240,
            what="the rollout to complete after the restart",
        )
    history = done["history"]
    killed_at = next(i for i, h in enumerate(history) if h["at"] >= before["history"][-1]["at"])
    after_restart = history[killed_at:]
    assert not [
        h
        for h in after_restart
        if h["reason"] in ("RolloutStarted", "RolloutRestartedForNewRevision")
    ]
    steps = [h["canaryAgents"] for h in history if h["reason"] in ("RolloutStarted", "StepStarted")]
    assert steps == [1, 2, 3, 4, 5, 6], "every step once, in order, none repeated from the start"
    assert sampler.samples > 50
    assert sampler.minimum is not None
    assert sampler.minimum >= 6, "maxUnavailable 0: never below 6 Ready"


def test_the_capability_budget_never_takes_both_holders_away(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
) -> None:
    """Both gpu agents move at once and may both be unavailable: only the budget keeps one.

    The new revision's pods can never become Ready (no node matches their selector), so without
    the budget both stable agents would go at once and stay gone until the rollback.
    """
    policy = {
        **FAST_PHASED,
        "initial": {"count": 2, "soakSeconds": 1, "gate": {"minTasks": 0}},
        "maxUnavailable": 2,
        "maxSurge": 0,
        "capabilityBudget": 1,
        "progressDeadlineSeconds": 8,
    }
    start_fleet(fleets, pod_runner, redis_client, "rare", 2, rollout=policy, capabilities=["gpu"])
    with Sampler(fleets, "rare", capability="gpu") as sampler:
        fleets.patch_spec("rare", nodeSelector={"newfuse.io/no-such-node": "true"})
        wait_for(
            lambda: len([p for p in fleets.pods("rare") if p.status.phase == "Pending"]) >= 1,
            30,
            what="an unschedulable canary",
        )
        wait_for(
            lambda: rollout_of(fleets, "rare").get("phase") == "RolledBack",
            60,
            what="the deadline rollback",
        )
    assert sampler.samples > 20
    assert sampler.minimum == 1, "exactly one gpu agent was held back by the budget; never zero"
    history = [h["reason"] for h in rollout_of(fleets, "rare")["history"]]
    assert history[-1] == "ProgressDeadlineExceeded"


def test_pause_resume_promote_abort_and_retry_from_the_cli(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_client: redis.Redis,
    kubectl: Kubectl,
    operator: OperatorProcess,
    k8s_api: k8s_client.ApiClient,
) -> None:
    ns = fleets.namespace
    start_fleet(fleets, pod_runner, redis_client, "steered", 4, rollout=SLOW_PHASED)
    fleets.patch_spec("steered", image="newfuse/agent:0.5.0")

    def phase_is(phase: str, **fields: Any) -> bool:
        rollout = rollout_of(fleets, "steered")
        return rollout.get("phase") == phase and all(rollout.get(k) == v for k, v in fields.items())

    wait_for(lambda: phase_is("Analyzing", stage="Initial"), 60, what="stage 1 soaking")
    newfuse_rollout(kubectl, "pause", "steered", "-n", ns)
    wait_for(lambda: phase_is("Paused"), 30, what="Paused")
    paused = {c["type"]: c for c in fleets.get("steered")["status"]["conditions"]}["Paused"]
    assert (paused["status"], paused["reason"]) == ("True", "RolloutPaused")
    newfuse_rollout(kubectl, "resume", "steered", "-n", ns)
    wait_for(lambda: phase_is("Analyzing", stage="Initial"), 30, what="resumed")
    newfuse_rollout(kubectl, "promote", "steered", "-n", ns)
    wait_for(
        lambda: rollout_of(fleets, "steered").get("stage") == "Gradual",
        30,
        what="promoted to stage 2",
    )
    assert rollout_of(fleets, "steered")["canaryAgents"] == 2
    newfuse_rollout(kubectl, "abort", "steered", "-n", ns)
    wait_for(lambda: phase_is("Aborted"), 30, what="Aborted")
    stable = rollout_of(fleets, "steered")["stableRevision"]
    wait_for(
        lambda: (
            {p.metadata.labels[naming.LABEL_REVISION] for p in fleets.pods("steered")} == {stable}
        ),
        60,
        what="every agent back on stable",
    )
    assert "Aborted" in newfuse_rollout(kubectl, "status", "steered", "-n", ns)
    newfuse_rollout(kubectl, "retry", "steered", "-n", ns)
    wait_for(
        lambda: rollout_of(fleets, "steered").get("phase") in ("Progressing", "Analyzing"),
        30,
        what="retried",
    )
    reasons = [h["reason"] for h in rollout_of(fleets, "steered")["history"]]
    for expected in (
        "RolloutPaused",
        "RolloutResumed",
        "Promoted",
        "RolloutAborted",
        "RolloutRetried",
    ):
        assert expected in reasons, expected

    # Every control action left one audit line in the operator's JSON log, naming the
    # Kubernetes identity the CLI authenticated as.
    me = k8s_client.AuthenticationV1Api(k8s_api).create_self_subject_review(
        k8s_client.V1SelfSubjectReview()
    )

    def audited() -> list[dict[str, Any]]:
        lines = operator.log_path.read_text().splitlines()
        records = [json.loads(line) for line in lines if line.startswith("{")]
        return [r for r in records if r.get("audit") and r.get("namespace") == ns]

    wait_for(lambda: len(audited()) >= 5, 10, what="five audit lines")
    assert [r["action"] for r in audited()] == ["pause", "resume", "promote", "abort", "retry"]
    assert {r["by"] for r in audited()} == {me.status.user_info.username}
    assert all(r["fleet"] == "steered" and r["requested_at"] for r in audited())
