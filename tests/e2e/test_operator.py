"""The operator against the real control plane and Redis: every must-show of the operator core.

Each test gets its own namespace; the operator process is shared by the session (tests that kill it
start it again).
"""

from __future__ import annotations

import json
import signal
import time
from pathlib import Path
from typing import Any

import pytest
import redis
from kubernetes import client as k8s_client

from harness import Cluster, Fleets, Kubectl, OperatorProcess, RedisHandle, metric_value
from localcluster import wait_for
from newfuse.api.v1alpha1 import GROUP, PLURAL, VERSION
from newfuse.core import naming
from newfuse.wire.keys import FleetKeys
from newfuse.wire.state import AgentMetrics, AgentState, AgentStatus, StateUpdate

SAMPLES = Path(__file__).resolve().parents[2] / "crds" / "samples"
pytestmark = pytest.mark.usefixtures("operator")


def test_sample_becomes_available_with_status_and_printer_columns(
    fleets: Fleets, kubectl: Kubectl, namespace: str
) -> None:
    kubectl("apply", "-n", namespace, "-f", str(SAMPLES / "summarizer.yaml"))
    body = fleets.wait_available("summarizer", 3)
    status = body["status"]
    assert status["updatedReplicas"] == 3
    assert status["currentRevision"] == status["updateRevision"]
    assert status["capabilities"] == ["echo", "summarize"]
    assert {c["type"] for c in status["conditions"]} >= {
        "Available",
        "Progressing",
        "Degraded",
        "Paused",
    }
    for pod in fleets.pods("summarizer"):
        assert pod.status.phase == "Running"
        assert pod.metadata.labels[naming.LABEL_REVISION] == status["updateRevision"]
        assert pod.metadata.owner_references[0].name == "summarizer"
        assert pod.spec.node_name, "scheduled onto a node"
    table = kubectl("get", "nfa", "-n", namespace)
    header, row = table.splitlines()[:2]
    assert header.split()[:6] == ["NAME", "DESIRED", "READY", "PHASE", "REVISION", "TASKS"]
    assert row.split()[:5] == ["summarizer", "3", "3", "Available", status["updateRevision"]]
    events = kubectl("get", "events", "-n", namespace, "-o", "json")
    reasons = {e["reason"] for e in json.loads(events)["items"]}
    assert {"PodCreated", "PhaseChanged"} <= reasons


def test_scale_subresource_up_and_down_removes_highest_ordinals(
    fleets: Fleets, kubectl: Kubectl, namespace: str
) -> None:
    fleets.create("scaler", replicas=2)
    revision = fleets.wait_available("scaler", 2)["status"]["updateRevision"]
    kubectl("scale", "-n", namespace, "nfa/scaler", "--replicas=5")
    fleets.wait_available("scaler", 5)
    kubectl("scale", "-n", namespace, "nfa/scaler", "--replicas=2")
    fleets.wait_available("scaler", 2)
    assert fleets.live_pod_names("scaler") == [f"scaler-{revision}-0", f"scaler-{revision}-1"]
    scale = json.loads(
        kubectl("get", "-n", namespace, "nfa/scaler", "--subresource=scale", "-o", "json")
    )
    assert scale["spec"]["replicas"] == 2
    assert scale["status"]["replicas"] == 2
    assert "newfuse.io/fleet=scaler" in scale["status"]["selector"]


def test_deleted_pod_is_recreated(fleets: Fleets, namespace: str) -> None:
    fleets.create("healer", replicas=2)
    fleets.wait_available("healer", 2)
    victim = fleets.pods("healer")[0]
    fleets.core.delete_namespaced_pod(str(victim.metadata.name), namespace)

    def replaced() -> bool:
        pods = {p.metadata.name: p for p in fleets.pods("healer")}
        again = pods.get(victim.metadata.name)
        return again is not None and again.metadata.uid != victim.metadata.uid and len(pods) == 2

    wait_for(replaced, 60, what="the deleted pod recreated under the same name")
    fleets.wait_available("healer", 2)


def test_changed_image_replaces_pods_with_a_new_revision(fleets: Fleets) -> None:
    fleets.create("upgrader", replicas=3, rollout={"strategy": "Replace"})
    old = fleets.wait_available("upgrader", 3)["status"]["updateRevision"]
    fleets.patch_spec("upgrader", image="newfuse/agent:0.2.0")

    def upgraded() -> dict[str, Any] | None:
        body = fleets.available("upgrader", 3)
        if body is None or body["status"]["updateRevision"] == old:
            return None
        pods = fleets.pods("upgrader")
        if {p.metadata.labels[naming.LABEL_REVISION] for p in pods} != {
            body["status"]["updateRevision"]
        }:
            return None
        return body

    body = wait_for(upgraded, 90, what="all pods at the new revision")
    assert body["status"]["currentRevision"] == body["status"]["updateRevision"] != old
    assert {p.spec.containers[0].image for p in fleets.pods("upgrader")} == {"newfuse/agent:0.2.0"}


def test_paused_fleet_is_left_alone(fleets: Fleets, namespace: str) -> None:
    fleets.create("frozen", replicas=2)
    fleets.wait_available("frozen", 2)
    fleets.patch_spec("frozen", paused=True, replicas=4)

    def paused() -> bool:
        status = fleets.get("frozen").get("status", {})
        return bool(status.get("phase") == "Paused" and status.get("observedGeneration") == 2)

    wait_for(paused, 30, what="phase Paused at generation 2")
    victim = fleets.live_pod_names("frozen")[0]
    fleets.core.delete_namespaced_pod(victim, namespace)
    # Gone, not just Terminating: until then its name is taken and no operator could recreate it.
    wait_for(
        lambda: victim not in [p.metadata.name for p in fleets.pods("frozen")],
        30,
        what="pod gone",
    )
    wait_for(
        lambda: fleets.get("frozen")["status"]["readyReplicas"] == 1,
        30,
        what="status to see 1 ready pod",
    )
    # Level-based: the pod's DELETED event and three resyncs (every 2 s in tests) must not act.
    gone_at = time.monotonic()

    def three_resyncs_later() -> bool:
        assert len(fleets.pods("frozen")) == 1, "a paused fleet's pod was recreated"
        return time.monotonic() - gone_at > 3 * 2.0

    wait_for(three_resyncs_later, 30, what="three resyncs while paused")
    fleets.patch_spec("frozen", paused=False)
    fleets.wait_available("frozen", 4)


def test_deleting_the_fleet_removes_pods_and_redis_keys(
    fleets: Fleets, namespace: str, redis_client: redis.Redis
) -> None:
    fleets.create("doomed", replicas=2)
    fleets.wait_available("doomed", 2)
    keys = FleetKeys(namespace, "doomed")
    wait_for(
        lambda: redis_client.exists(keys.fleet_state),
        30,
        what="the fleet's state mirrored to Redis",
    )
    redis_client.xadd(f"{keys.task_stream}:normal", {"task": "x"})
    assert fleets.get("doomed")["metadata"]["finalizers"] == [naming.FINALIZER]
    fleets.custom.delete_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, "doomed")

    def gone() -> bool:
        try:
            fleets.get("doomed")
        except k8s_client.ApiException as exc:
            return bool(exc.status == 404)
        return False

    wait_for(gone, 60, what="the fleet deleted (finalizer released)")
    wait_for(lambda: not fleets.pods("doomed"), 60, what="garbage collection of the fleet's pods")
    assert list(redis_client.scan_iter(match=keys.pattern)) == []


def test_operator_killed_mid_convergence_converges_without_duplicates(
    fleets: Fleets, operator: OperatorProcess
) -> None:
    fleets.create("crashy", replicas=12)
    wait_for(lambda: len(fleets.pods("crashy")) >= 3, 60, what="some pods created")
    operator.kill(signal.SIGKILL)
    try:
        fleets.patch_spec("crashy", replicas=15)
    finally:
        operator.start()
    body = fleets.wait_available("crashy", 15, timeout=120)
    revision = body["status"]["updateRevision"]
    pods = fleets.pods("crashy")
    assert sorted(str(p.metadata.name) for p in pods) == sorted(
        f"crashy-{revision}-{i}" for i in range(15)
    )
    assert all(p.metadata.owner_references[0].uid == body["metadata"]["uid"] for p in pods)


INVALID = {
    "negative replicas": ("spec:\n  image: a\n  replicas: -1\n", "spec.replicas"),
    "empty image": ("spec:\n  image: ''\n", "spec.image"),
    "missing image": ("spec:\n  replicas: 1\n", "spec.image"),
    "unknown rollout field": (
        "spec:\n  image: a\n  rollout:\n    surprise: 1\n",
        "spec.rollout.surprise",
    ),
    "gateway model without endpoint": (
        "spec:\n  image: a\n  gateway:\n    model: m\n",
        "spec.gateway.endpoint",
    ),
    "bad capability": (
        "spec:\n  image: a\n  capabilities: ['Not Valid']\n",
        "spec.capabilities[0]",
    ),
    "bad protocol version": ("spec:\n  image: a\n  protocolVersion: v1\n", "spec.protocolVersion"),
    "env value and valueFrom": (
        "spec:\n  image: a\n  env:\n  - name: A\n    value: x\n"
        "    valueFrom:\n      fieldRef: {fieldPath: metadata.name}\n",
        "spec.env[0].valueFrom",
    ),
}


def _manifest(name: str, body: str) -> str:
    return f"apiVersion: {GROUP}/{VERSION}\nkind: NewFuseAgent\nmetadata:\n  name: {name}\n{body}"


@pytest.mark.parametrize(("manifest", "field"), INVALID.values(), ids=INVALID.keys())
def test_invalid_manifest_is_rejected_naming_the_field(
    kubectl: Kubectl, namespace: str, manifest: str, field: str
) -> None:
    doc = _manifest("bad", manifest)
    result = kubectl.run("apply", "-n", namespace, "-f", "-", stdin=doc)
    assert result.returncode != 0, f"accepted: {doc}"
    assert field in result.stderr, result.stderr


def test_fleet_name_too_long_is_rejected(kubectl: Kubectl, namespace: str) -> None:
    doc = _manifest("x" * 41, "spec:\n  image: a\n")
    result = kubectl.run("apply", "-n", namespace, "-f", "-", stdin=doc)
    assert result.returncode != 0
    assert "metadata.name" in result.stderr


def _agent_update(
    agent: str, completed: int, version: int, revision: str, age_s: float = 0
) -> StateUpdate:
    import datetime as dt

    now = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=age_s)
    return StateUpdate(
        agent_id=agent,
        state=AgentState(
            id=agent,
            status=AgentStatus.ACTIVE,
            revision=revision,
            metrics=AgentMetrics(
                tasks_completed=completed,
                tasks_failed=1,
                requests_handled=completed + 1,
                last_active=now,
            ),
        ),
        version=version,
        timestamp=now,
    )


def _report(redis_client: redis.Redis, keys: FleetKeys, update: StateUpdate) -> None:
    redis_client.hset(keys.agents, update.agent_id, update.to_json())


def test_agent_metrics_fold_into_status_and_stale_heartbeats_show(
    fleets: Fleets, namespace: str, redis_client: redis.Redis, kubectl: Kubectl
) -> None:
    fleets.create("workers", replicas=2)
    body = fleets.wait_available("workers", 2)
    revision = body["status"]["updateRevision"]
    keys = FleetKeys(namespace, "workers")
    pods = fleets.live_pod_names("workers")
    _report(redis_client, keys, _agent_update(pods[0], 40, 1, revision))
    _report(redis_client, keys, _agent_update(pods[1], 60, 1, revision, age_s=120))

    def folded() -> dict[str, Any] | None:
        status = fleets.get("workers")["status"]
        metrics = status.get("metrics") or {}
        return (
            status
            if metrics.get("tasksCompleted") == 100 and metrics.get("staleAgents") == 1
            else None
        )

    status = wait_for(folded, 30, what="metrics folded into status")
    assert status["metrics"]["tasksFailed"] == 2
    assert status["metrics"]["errorRate"] == pytest.approx(2 / 102, abs=1e-4)
    heartbeat = {c["type"]: c for c in status["conditions"]}["AgentsHeartbeating"]
    assert (heartbeat["status"], heartbeat["reason"]) == ("False", "HeartbeatsStale")
    stale_column = (
        kubectl("get", "nfa", "workers", "-n", namespace, "-o", "wide").splitlines()[1].split()
    )
    assert "100" in stale_column
    mirrored = StateUpdate.model_validate_json(redis_client.hget(keys.fleet_state, "state"))  # type: ignore[arg-type]
    assert mirrored.agent_id == f"{namespace}/workers"
    assert mirrored.state.metrics.tasks_completed == 100


def test_redis_outage_is_a_condition_and_reconcile_goes_on(
    fleets: Fleets, namespace: str, redis_server: RedisHandle, redis_client: redis.Redis
) -> None:
    if redis_server.server is None:
        pytest.skip("needs a Redis this suite runs (NEWFUSE_REDIS_URL points elsewhere)")
    fleets.create("resilient", replicas=1)
    fleets.wait_available("resilient", 1)

    def redis_condition(expected: str) -> bool:
        conditions = {c["type"]: c for c in fleets.get("resilient")["status"]["conditions"]}
        return bool(conditions.get("RedisConnected", {}).get("status") == expected)

    redis_server.server.down()
    try:
        wait_for(lambda: redis_condition("False"), 30, what="RedisConnected=False")
        fleets.patch_spec("resilient", replicas=3)
        fleets.wait_available("resilient", 3)
    finally:
        redis_server.server.up()
    wait_for(lambda: redis_condition("True"), 30, what="RedisConnected=True again")
    keys = FleetKeys(namespace, "resilient")
    revision = fleets.get("resilient")["status"]["updateRevision"]
    _report(
        redis_client, keys, _agent_update(fleets.live_pod_names("resilient")[0], 7, 1, revision)
    )
    wait_for(
        lambda: (fleets.get("resilient")["status"].get("metrics") or {}).get("tasksCompleted") == 7,
        30,
        what="metrics flowing again",
    )


def test_operator_exposes_prometheus_metrics(operator: OperatorProcess, fleets: Fleets) -> None:
    fleets.create("observed", replicas=1)
    fleets.wait_available("observed", 1)
    # A level, not an event: the circuit may still be open after an earlier test's outage.
    wait_for(lambda: "newfuse_redis_up 1.0" in operator.metrics(), 30, what="newfuse_redis_up 1")
    text = operator.metrics()
    for name in (
        "newfuse_reconcile_duration_seconds_bucket",
        'newfuse_fleets{phase="Available"}',
        "newfuse_pods_managed",
    ):
        assert name in text, name
    # This very process did the work (not some other operator watching the same cluster).
    assert metric_value(text, 'newfuse_reconciles_total{result="success"}') > 0
    assert metric_value(text, 'newfuse_pod_actions_total{action="create"') >= 1


def test_namespace_scoping(
    k8s_api: k8s_client.ApiClient, namespace: str, operator: OperatorProcess, cluster: Cluster
) -> None:
    """An operator told to watch one namespace leaves fleets elsewhere alone."""
    core = k8s_client.CoreV1Api(k8s_api)
    outside = f"{namespace[:50]}-out"
    core.create_namespace(k8s_client.V1Namespace(metadata=k8s_client.V1ObjectMeta(name=outside)))
    scoped = OperatorProcess(
        cluster.kubeconfig,
        operator.env["NEWFUSE_REDIS_URL"],
        operator.log_path.with_name("test-operator-scoped.log"),
        NEWFUSE_NAMESPACES=namespace,
    )
    operator.kill()
    try:
        scoped.start()
        inside, elsewhere = Fleets(k8s_api, namespace), Fleets(k8s_api, outside)
        elsewhere.create("ignored", replicas=1)
        inside.create("watched", replicas=1)
        inside.wait_available("watched", 1)
        # The scoped operator handled its namespace; it never saw the other one.
        assert elsewhere.pods("ignored") == []
        assert "status" not in elsewhere.get("ignored")
        assert "finalizers" not in elsewhere.get("ignored")["metadata"]
    finally:
        scoped.kill()
        operator.start()
        core.delete_namespace(outside)


@pytest.mark.parametrize("sample", sorted(p.name for p in SAMPLES.glob("*.yaml")))
def test_every_sample_is_accepted_by_the_api_server(
    kubectl: Kubectl, namespace: str, sample: str
) -> None:
    out = kubectl("apply", "--dry-run=server", "-n", namespace, "-f", str(SAMPLES / sample))
    assert "created (server dry run)" in out
