"""A robust operator, on the real control plane and real Redis (issue 10).

- Garbage in every Redis hash agents can write never wedges a fleet's reconcile.
- Redis that hangs does not slow pod work: the circuit refuses Redis calls at once.
- Deleting a fleet leaves no key behind, even with agents running; and when Redis is gone, the
  fleet (and its namespace) is still deleted, at once with the skip annotation or after the
  bounded wait.

Tests that need Redis down run their own operator, scoped to their namespaces, against a Redis
they own (a dedicated redis-server they stop, or a port that never answers): the session's Redis
is shared and is never stopped here. The session operator is stopped meanwhile, so only the
operator under test acts on those namespaces.
"""

from __future__ import annotations

import json
import socket
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kubernetes import client as k8s_client

from harness import (
    Cluster,
    Fleets,
    Kubectl,
    OperatorProcess,
    agents_of,
    metric_value,
    start_fleet,
)
from localcluster import RedisServer, processes, wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.api.v1alpha1 import GROUP, PLURAL, VERSION
from newfuse.config import DEFAULT_REDIS_CLEANUP_TIMEOUT_SECONDS
from newfuse.core import naming
from newfuse.wire.keys import FleetKeys
from newfuse.wire.state import AgentMetrics, AgentState, AgentStatus, StateUpdate

pytestmark = pytest.mark.usefixtures("operator")


def _update(agent: str, completed: int, revision: str) -> StateUpdate:
    import datetime as dt

    now = dt.datetime.now(dt.UTC)
    return StateUpdate(
        agent_id=agent,
        state=AgentState(
            id=agent,
            status=AgentStatus.ACTIVE,
            revision=revision,
            metrics=AgentMetrics(tasks_completed=completed, requests_handled=completed),
        ),
        version=1,
        timestamp=now,
    )


def _conditions(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["type"]: c for c in (body.get("status") or {}).get("conditions", [])}


def _gone(fleets: Fleets, name: str) -> bool:
    try:
        fleets.get(name)
    except k8s_client.ApiException as exc:
        return bool(exc.status == 404)
    return False


def _events(kubectl: Kubectl, namespace: str, name: str) -> list[dict[str, Any]]:
    items = json.loads(kubectl("get", "events", "-n", namespace, "-o", "json"))["items"]
    return [e for e in items if e["involvedObject"]["name"] == name]


def _reasons(kubectl: Kubectl, namespace: str, name: str, reason: str) -> list[dict[str, Any]]:
    return [e for e in _events(kubectl, namespace, name) if e["reason"] == reason]


def _delete(fleets: Fleets, name: str) -> None:
    fleets.custom.delete_namespaced_custom_object(GROUP, VERSION, fleets.namespace, PLURAL, name)


def test_garbage_in_every_hash_never_wedges_the_reconcile(
    fleets: Fleets, namespace: str, redis_client: redis.Redis, operator: OperatorProcess
) -> None:
    fleets.create("garbled", replicas=2, rollout={"strategy": "Replace"})
    body = fleets.wait_available("garbled", 2)
    revision = body["status"]["updateRevision"]
    keys = FleetKeys(namespace, "garbled")
    wait_for(lambda: redis_client.exists(keys.fleet_state), 30, what="fleet state mirrored")
    before = operator.metrics()
    live = fleets.live_pod_names("garbled")[0]
    good = _update(live, 11, revision).to_json()
    redis_client.hset(
        keys.agents,
        mapping={live: good, "evil": "{", "naive": good.replace("Z", "").replace("+00:00", "")},
    )
    redis_client.hset(
        keys.retired, mapping={"old": _update("old", 4, revision).to_json(), "bad": "[1]"}
    )
    redis_client.hset(
        keys.counters,
        mapping={f"rev:{revision}:tasksCompleted": "garbage", "tasksFailed": "9" * 40},
    )
    redis_client.hset(keys.fleet_state, "state", "not a state update")
    redis_client.hset(keys.versions, mapping={"fleet": "garbage", f"agent:{live}": "x"})
    fleets.patch_spec("garbled", replicas=3)
    fleets.wait_available("garbled", 3)

    def folded() -> dict[str, Any] | None:
        status = fleets.get("garbled")["status"]
        metrics = status.get("metrics") or {}
        return status if metrics.get("tasksCompleted") == 11 + 4 else None

    status = wait_for(folded, 30, what="the good records folded into status, the bad skipped")
    assert _conditions({"status": status})["RedisConnected"]["status"] == "True"
    mirrored = StateUpdate.model_validate_json(str(redis_client.hget(keys.fleet_state, "state")))
    assert mirrored.agent_id == f"{namespace}/garbled", "the garbage version did not block it"
    after = operator.metrics()
    for kind in ("agents", "retired", "counters"):
        prefix = f'newfuse_redis_malformed_records_total{{key="{kind}"}}'
        assert metric_value(after, prefix) > metric_value(before, prefix), kind
    log = operator.log_path.read_text()
    assert f"skipping 2 malformed agents record(s) of {namespace}/garbled: 'evil'" in log


@pytest.fixture
def black_hole() -> Iterator[int]:
    """A port that accepts connections and never answers: every command waits its timeout."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(512)
    yield sock.getsockname()[1]
    sock.close()


@pytest.fixture
def own_operator(
    operator: OperatorProcess, cluster: Cluster, request: pytest.FixtureRequest
) -> Iterator[list[OperatorProcess]]:
    """Stops the session operator; the test starts its own (appended here), stopped after it."""
    started: list[OperatorProcess] = []
    operator.kill()
    try:
        yield started
    finally:
        for proc in started:
            proc.kill()
        operator.start()


def test_redis_hanging_does_not_delay_pod_work(
    k8s_api: k8s_client.ApiClient,
    namespace: str,
    cluster: Cluster,
    operator: OperatorProcess,
    own_operator: list[OperatorProcess],
    black_hole: int,
) -> None:
    redis_timeout = 8.0
    scoped = OperatorProcess(
        cluster.kubeconfig,
        f"redis://127.0.0.1:{black_hole}/0",
        operator.log_path.with_name("test-operator-hanging-redis.log"),
        NEWFUSE_NAMESPACES=namespace,
        NEWFUSE_REDIS_TIMEOUT_SECONDS=str(redis_timeout),
    )
    own_operator.append(scoped)
    scoped.start()
    fleets = Fleets(k8s_api, namespace)
    names = [f"hang-{i}" for i in range(4)]
    for name in names:
        fleets.create(name, replicas=1)  # Phased: its gate reads Redis before it plans pods

    def all_up_without_redis() -> bool:
        bodies = [fleets.available(name, 1) for name in names]
        return all(
            b is not None and _conditions(b)["RedisConnected"]["status"] == "False" for b in bodies
        )

    wait_for(all_up_without_redis, 90, what="fleets Available with RedisConnected=False")
    created = 'newfuse_pod_actions_total{action="create"'
    before = metric_value(scoped.metrics(), created)
    started = time.perf_counter()
    for name in names:
        fleets.patch_spec(name, replicas=3)
    wait_for(
        lambda: all(len(fleets.live_pod_names(n)) == 3 for n in names),
        60,
        what="every fleet scaled to 3 pods",
    )
    took = time.perf_counter() - started
    print(f"4 fleets scaled 1 -> 3 with Redis hanging (timeout {redis_timeout}s): {took:.2f}s")
    # Without the circuit each reconcile would wait at least one Redis timeout before its pods.
    assert took < redis_timeout / 2
    for name in names:
        fleets.wait_available(name, 3)
    text = scoped.metrics()
    assert metric_value(text, created) - before == 2 * len(names), (
        "the operator under test created every new pod (not another operator on this cluster)"
    )
    assert "newfuse_redis_up 0.0" in text


def test_deleting_a_fleet_with_running_agents_leaves_no_key(
    fleets: Fleets,
    namespace: str,
    redis_client: redis.Redis,
    pod_runner: PodRunnerProcess,
    kubectl: Kubectl,
) -> None:
    start_fleet(fleets, pod_runner, redis_client, "doomed", 2)
    keys = FleetKeys(namespace, "doomed")
    redis_client.xadd(keys.dead_letters, {"reason": "a key the agents do not heartbeat"})
    agents = agents_of(pod_runner, namespace)
    assert len(agents) == 2
    present = {k for k in keys.all_keys() if redis_client.exists(k)}
    assert {keys.agents, keys.versions, keys.fleet_state, keys.dead_letters} <= present
    started = time.perf_counter()
    _delete(fleets, "doomed")
    wait_for(lambda: _gone(fleets, "doomed"), 90, what="the fleet deleted")
    took = time.perf_counter() - started
    print(f"fleet with 2 running agents deleted in {took:.1f}s")
    wait_for(
        lambda: not any(processes.is_running(a.record()) for a in agents),
        60,
        what="every agent process ended",
    )
    # Every key of the keyspace, not only the names the operator knows.
    tag = f"{{{namespace}/doomed}}"
    left = [k for k in redis_client.scan_iter(match="*", count=1000) if tag in str(k)]
    assert left == []
    reasons = [e["reason"] for e in _events(kubectl, namespace, "doomed")]
    assert "RedisKeysRemoved" in reasons


def test_with_redis_down_fleets_and_namespaces_are_still_deleted(
    k8s_api: k8s_client.ApiClient,
    namespace: str,
    cluster: Cluster,
    operator: OperatorProcess,
    own_operator: list[OperatorProcess],
    kubectl: Kubectl,
    tmp_path: Path,
) -> None:
    wait_s = 10.0
    assert wait_s < DEFAULT_REDIS_CLEANUP_TIMEOUT_SECONDS  # the default is checked in unit tests
    core = k8s_client.CoreV1Api(k8s_api)
    other = f"{namespace[:40]}-ns-{uuid.uuid4().hex[:4]}"
    core.create_namespace(k8s_client.V1Namespace(metadata=k8s_client.V1ObjectMeta(name=other)))
    server = RedisServer(tmp_path / "redis")

    def namespace_gone() -> bool:
        try:
            core.read_namespace(other)
        except k8s_client.ApiException as exc:
            return bool(exc.status == 404)
        return False

    url = server.up().url
    try:
        scoped = OperatorProcess(
            cluster.kubeconfig,
            url,
            operator.log_path.with_name("test-operator-redis-down.log"),
            NEWFUSE_NAMESPACES=f"{namespace},{other}",
            NEWFUSE_REDIS_CLEANUP_TIMEOUT_SECONDS=str(wait_s),
        )
        own_operator.append(scoped)
        scoped.start()
        fleets, elsewhere = Fleets(k8s_api, namespace), Fleets(k8s_api, other)
        for target, name in ((fleets, "skipper"), (fleets, "waiter"), (elsewhere, "lingering")):
            target.create(name, replicas=1)
        client = redis.Redis.from_url(url)
        mirrored = [FleetKeys(namespace, "skipper").fleet_state]
        mirrored += [FleetKeys(namespace, "waiter").fleet_state]
        mirrored += [FleetKeys(other, "lingering").fleet_state]
        wait_for(lambda: client.exists(*mirrored) == 3, 60, what="the three fleets in Redis")
        client.close()
        server.down()

        # The annotation: released at once.
        fleets.custom.patch_namespaced_custom_object(
            GROUP, VERSION, namespace, PLURAL, "skipper",
            {"metadata": {"annotations": {naming.SKIP_REDIS_CLEANUP_ANNOTATION: "true"}}},
        )  # fmt: skip
        started = time.perf_counter()
        _delete(fleets, "skipper")
        wait_for(lambda: _gone(fleets, "skipper"), 60, what="skipper deleted")
        skipped_in = time.perf_counter() - started

        # The bounded wait: released once it is over, and not before.
        started = time.perf_counter()
        _delete(fleets, "waiter")
        waiting = wait_for(
            lambda: _reasons(kubectl, namespace, "waiter", "RedisCleanupWaiting"),
            30,
            what="a Warning Event saying what the finalizer waits for",
        )
        assert not _gone(fleets, "waiter")
        wait_for(lambda: _gone(fleets, "waiter"), wait_s + 60, what="waiter deleted")
        waited = time.perf_counter() - started

        # A namespace with a fleet in it can be deleted.
        started = time.perf_counter()
        core.delete_namespace(other)
        wait_for(namespace_gone, wait_s + 120, what=f"namespace {other} deleted")
        namespace_took = time.perf_counter() - started
    finally:
        server.down()
        if not namespace_gone():
            core.delete_namespace(other)
    for name in ("skipper", "waiter"):
        assert not _reasons(kubectl, namespace, name, "RedisKeysRemoved"), (
            f"{name}: another operator, with a working Redis, finalized it: run this test with "
            "no other operator watching every namespace of the cluster"
        )
    print(
        f"Redis down, wait {wait_s:g}s: annotated fleet deleted in {skipped_in:.1f}s, "
        f"the other in {waited:.1f}s, namespace in {namespace_took:.1f}s"
    )
    assert skipped_in < wait_s / 2
    # Whole-second clocks on both sides: the release is due within a second of the wait.
    assert wait_s - 1.5 <= waited < wait_s + 15
    message = waiting[0]["message"]
    assert waiting[0]["type"] == "Warning"
    assert f"{naming.SKIP_REDIS_CLEANUP_ANNOTATION}=true" in message
    assert f"NEWFUSE_REDIS_CLEANUP_TIMEOUT_SECONDS={wait_s:g}" in message
    gave_up = _reasons(kubectl, namespace, "waiter", "RedisCleanupSkipped")
    assert gave_up, "an Event says the keys were left"
    assert f"gave up after {wait_s:g}s" in gave_up[0]["message"]
    assert _reasons(kubectl, namespace, "skipper", "RedisCleanupSkipped"), "an Event says so"
    log = scoped.log_path.read_text()
    assert FleetKeys(namespace, "waiter").agents in log, "the keys left are logged by name"
    assert FleetKeys(namespace, "skipper").agents in log
    # Redis (it keeps its data across a restart) still has them: nothing was removed.
    client = redis.Redis.from_url(server.up().url)
    try:
        assert client.exists(FleetKeys(namespace, "waiter").fleet_state)
        assert client.exists(FleetKeys(namespace, "skipper").fleet_state)
    finally:
        client.close()
        server.down()
