"""Two teams' fleets on one cluster and one Redis, sharing one signing key, are kept apart.

The worst case of a shared key (the operator's default key signs for every fleet): the fleets
even have the same name, so their agents have the same ids. Before signatures named their
audience, one captured drain notice drained both fleets and a task copied from A's stream ran in
B. Now A's drain notice is taken once by A, refused when replayed to A (even after A's agent
restarted, so the guard is not in memory only), and refused by B; A's signed task is refused in
B's stream. Agents run as processes here (the pod runner); the signing path is the same in pods.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import redis
from kubernetes import client as k8s_client

from harness import (
    Cluster,
    Fleets,
    OperatorProcess,
    RedisHandle,
    agents_of,
    signing_secret,
    start_fleet,
)
from localcluster import wait_for
from localcluster.podrunner import AgentEntry, PodRunnerProcess
from newfuse.adapters.taskclient import StreamEntries
from newfuse.wire.envelope import MessageType, encode
from newfuse.wire.keys import FleetKeys
from newfuse.wire.signing import Channel, Signer
from newfuse.wire.tasks import Priority

KEY = "one-key-for-every-fleet-0123456789abcdef"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def tenant_b(
    k8s_api: k8s_client.ApiClient,
    cluster: Cluster,
    redis_server: RedisHandle,
    operator: OperatorProcess,
) -> Iterator[tuple[Fleets, PodRunnerProcess]]:
    """A second team's namespace, with its own pod runner."""
    core = k8s_client.CoreV1Api(k8s_api)
    name = f"t-tenant-b-{uuid.uuid4().hex[:6]}"
    labels = {"newfuse.io/test": "true"}
    core.create_namespace(
        k8s_client.V1Namespace(metadata=k8s_client.V1ObjectMeta(name=name, labels=labels))
    )
    runner = PodRunnerProcess(REPO / ".local" / "test-podrunner" / name)
    runner.up(cluster.kubeconfig, redis_server.url, print, namespace=name)
    yield Fleets(k8s_api, name), runner
    runner.down()
    core.delete_namespace(name)


def _log(agent: AgentEntry) -> str:
    """The agent's log, across its restarts (one file per pod)."""
    return Path(agent.log).read_text(errors="replace")


def _restarts(runner: PodRunnerProcess, namespace: str) -> int:
    """The agent's restarts so far (0 while the runner lists it between two starts)."""
    return max((a.restarts for a in agents_of(runner, namespace)), default=0)


def _publish_until_heard(client: redis.Redis, channel: str, raw: bytes) -> None:
    """Publish once somebody listens (a restarting agent may be between subscriptions)."""
    wait_for(lambda: int(client.publish(channel, raw)) >= 1, 60, what=f"a listener on {channel}")


def _sign_for(
    keys: FleetKeys, channel: Channel, type_: MessageType, payload: dict[str, object]
) -> bytes:
    return encode(
        type_,
        payload,
        "newfuse-operator" if channel is Channel.COORDINATION else "team-a-client",
        now=dt.datetime.now(dt.UTC),
        audience=keys.audience(channel),
        signer=Signer(KEY.encode()),
    )


def test_two_tenants_sharing_a_key_are_kept_apart(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    tenant_b: tuple[Fleets, PodRunnerProcess],
    redis_client: redis.Redis,
    k8s_api: k8s_client.ApiClient,
) -> None:
    fleets_b, runner_b = tenant_b
    ns_a, ns_b = fleets.namespace, fleets_b.namespace
    for team, runner in ((fleets, pod_runner), (fleets_b, runner_b)):
        signing = {**signing_secret(k8s_api, team.namespace, KEY), "required": True}
        start_fleet(team, runner, redis_client, "worker", 1, signing=signing)
    keys_a, keys_b = FleetKeys(ns_a, "worker"), FleetKeys(ns_b, "worker")
    [agent_a] = agents_of(pod_runner, ns_a)
    [agent_b] = agents_of(runner_b, ns_b)
    assert agent_a.pod == agent_b.pod, "same agent ids: only the audience tells them apart"

    # A's genuine drain notice: A's agent drains and the pod runner restarts it.
    notice = _sign_for(keys_a, Channel.COORDINATION, MessageType.DRAIN, {"target": agent_a.pod})
    _publish_until_heard(redis_client, keys_a.coordination_channel, notice)
    wait_for(lambda: _restarts(pod_runner, ns_a) >= 1, 90, what="A drained and restarted")
    assert "drain requested" in _log(agent_a)

    # Replayed to A's new incarnation: refused, it was taken.
    _publish_until_heard(redis_client, keys_a.coordination_channel, notice)
    wait_for(
        lambda: "refused a coordination message: replayed" in _log(agent_a),
        30,
        what="A refuses the replay",
    )
    # Replayed to B: refused, it is A's.
    _publish_until_heard(redis_client, keys_b.coordination_channel, notice)
    wait_for(
        lambda: "refused a coordination message: wrong_audience" in _log(agent_b),
        30,
        what="B refuses A's notice",
    )

    # A's signed task, copied into B's stream: dead-lettered by B, never run, no result.
    task = _sign_for(
        keys_a, Channel.TASKS, MessageType.TASK, {"task_id": "copied", "handler": "echo"}
    )
    redis_client.xadd(keys_b.tasks(Priority.NORMAL), {"task_id": "copied", "envelope": task})
    wait_for(lambda: redis_client.xlen(keys_b.dead_letters) >= 1, 60, what="B's dead letter")
    [(_, letter)] = cast(StreamEntries, redis_client.xrange(keys_b.dead_letters))
    assert letter["reason"] == "wrong_audience"
    assert not redis_client.hexists(keys_b.result_index, "copied"), "no result: not B's to answer"

    # B worked on throughout: never drained, still takes its own tasks.
    assert "drain requested" not in _log(agent_b)
    assert _restarts(runner_b, ns_b) == 0
    own = _sign_for(keys_b, Channel.TASKS, MessageType.TASK, {"task_id": "own", "handler": "echo"})
    redis_client.hset(keys_b.task_index, "own", "x")
    redis_client.xadd(keys_b.tasks(Priority.NORMAL), {"task_id": "own", "envelope": own})
    started = time.monotonic()
    wait_for(lambda: redis_client.hexists(keys_b.result_index, "own"), 30, what="B's own task")
    print(f"B ran its own task {time.monotonic() - started:.2f}s after A's were refused")
