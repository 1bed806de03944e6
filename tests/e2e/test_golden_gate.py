"""The golden-task gate end to end: operator, agent processes, live traffic, default gate settings.

A revision that answers wrongly without raising an error (NEWFUSE_ECHO_CASE=upper) passes the
success-rate gate; the golden cases in a ConfigMap catch it and roll it back, while a correct
revision walks through every gate. Soaks, minimum tasks and thresholds are the defaults.
"""

from __future__ import annotations

import json
from typing import Any

import redis

from harness import FAST_AGENT_ENV, Fleets, Kubectl, RedisHandle, start_fleet
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.core import naming
from newfuse.wire.keys import FleetKeys
from rollouts import Traffic, every_task_accounted_for, rollout_of

CASES = """
- {name: greet, handler: echo, input: {text: hello}, expect: {exact: {text: hello}}}
- {name: list, handler: echo, input: [a, b], expect: {exact: [a, b]}}
- {name: sentence, handler: echo, input: "the quick fox", expect: {regex: '^the quick'}}
- {name: word, handler: echo, input: {w: lower}, expect: {contains: lower}}
- name: shape
  handler: echo
  input: {n: one}
  expect: {jsonSchema: {properties: {n: {const: one}}}}
"""
JUDGED = {"strategy": "Phased", "analysis": {"goldenTasks": {"configMap": "golden"}}}
WRONG_ANSWERS = [*FAST_AGENT_ENV, {"name": "NEWFUSE_ECHO_CASE", "value": "upper"}]
SECONDS = 300  # default soaks (60 s, then 30 s per step) plus agents starting


def _cases(kubectl: Kubectl, namespace: str) -> None:
    kubectl("create", "configmap", "golden", "-n", namespace, f"--from-literal=cases.yaml={CASES}")


def _ended(fleets: Fleets, name: str, phase: str) -> dict[str, Any]:
    def ended() -> dict[str, Any] | None:
        state = rollout_of(fleets, name)
        return state if state.get("phase") == phase else None

    return wait_for(ended, SECONDS, what=f"{name}'s rollout {phase}")


def test_a_revision_answering_wrongly_passes_todays_gates_but_the_golden_gate_rolls_it_back(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
    kubectl: Kubectl,
) -> None:
    ns = fleets.namespace
    _cases(kubectl, ns)
    stable = start_fleet(fleets, pod_runner, redis_client, "judged", 2, fast=False, rollout=JUDGED)
    plain = {"strategy": "Phased"}
    start_fleet(fleets, pod_runner, redis_client, "plain", 2, fast=False, rollout=plain)
    with Traffic(redis_server.url, ns, "judged") as traffic, Traffic(redis_server.url, ns, "plain"):
        for name in ("judged", "plain"):
            fleets.patch_spec(name, env=WRONG_ANSWERS)
        passed = _ended(fleets, "plain", "Completed")
        rolled = _ended(fleets, "judged", "RolledBack")
        wait_for(
            lambda: (
                {p.metadata.labels[naming.LABEL_REVISION] for p in fleets.pods("judged")}
                == {stable["status"]["updateRevision"]}
            ),
            90,
            what="every judged agent back on the stable revision",
        )
    # Today's gates: no errors, so the same wrong answers pass them.
    [gate] = [h for h in passed["history"] if h["reason"] == "GatePassed"]
    assert gate["verdict"]["measured"]["errorRate"] == 0.0
    assert gate["verdict"]["measured"]["tasks"] >= 20
    # The golden gate: every case wrong on the canary, right on stable, with the numbers.
    verdict = rolled["lastVerdict"]
    print("figures:", verdict["reason"], verdict["measured"])  # shown with -s
    measured = verdict["measured"]
    assert verdict["result"] == "Failed"
    assert (measured["goldenCases"], measured["goldenPassRate"]) == (5, 0.0)
    assert measured["stableGoldenPassRate"] == 1.0
    assert set(measured["goldenFailed"]) == {"greet", "list", "sentence", "word", "shape"}
    assert measured["errorRate"] == 0.0, "no task failed: only the answers were wrong"
    assert "golden pass rate 0.0% < 90.0%" in verdict["reason"]
    degraded = {c["type"]: c for c in fleets.get("judged")["status"]["conditions"]}["Degraded"]
    assert (degraded["status"], degraded["reason"]) == ("True", "RolledBack")
    events = json.loads(kubectl("get", "events", "-n", ns, "-o", "json"))["items"]
    [event] = [
        e for e in events if e["reason"] == "RolledBack" and e["involvedObject"]["name"] == "judged"
    ]
    assert "golden pass rate 0.0%" in event["message"]
    every_task_accounted_for(redis_client, FleetKeys(ns, "judged"), traffic.ids)


def test_a_correct_revision_passes_every_golden_gate_and_completes(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
    kubectl: Kubectl,
) -> None:
    ns = fleets.namespace
    _cases(kubectl, ns)
    start_fleet(fleets, pod_runner, redis_client, "steady", 3, fast=False, rollout=JUDGED)
    with Traffic(redis_server.url, ns, "steady"):
        fleets.patch_spec("steady", image="newfuse/agent:0.2.0")
        done = _ended(fleets, "steady", "Completed")
    gates = [h["verdict"]["measured"] for h in done["history"] if h["reason"] == "GatePassed"]
    print("figures:", gates)  # shown with -s
    assert len(gates) == 2, "stage 1's gate and stage 2's one step"
    for measured in gates:
        assert (measured["goldenCases"], measured["goldenPassRate"]) == (5, 1.0)
        assert measured["stableGoldenPassRate"] == 1.0
    outputs = redis_client.hgetall(FleetKeys(ns, "steady").golden_outputs)
    assert len(outputs) == 10, "the last gate's run: 5 cases on canary and on stable"
