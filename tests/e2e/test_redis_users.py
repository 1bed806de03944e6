"""With NEWFUSE_MANAGE_REDIS_USERS, each fleet's agents log in as a Redis user of their own.

An operator scoped to two namespaces (the session operator is stopped meanwhile, so only it acts
there) makes a user per fleet, confined to the fleet's keys and channels, and a Secret the fleet
owns with its URL. Agents work under it; with team A's credentials, team B's keys and channels
answer NOPERM; deleting a fleet deletes its user, and the garbage collector its Secret.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from kubernetes import client as k8s_client

from harness import Cluster, Fleets, OperatorProcess, RedisHandle, start_fleet
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.api.v1alpha1 import GROUP, PLURAL, VERSION
from newfuse.core import acl
from newfuse.wire.envelope import MessageType, encode
from newfuse.wire.keys import FleetKeys
from newfuse.wire.signing import Channel
from newfuse.wire.tasks import Priority

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture
def teams(
    k8s_api: k8s_client.ApiClient,
    cluster: Cluster,
    redis_server: RedisHandle,
    operator: OperatorProcess,
) -> Iterator[tuple[Fleets, Fleets, list[PodRunnerProcess]]]:
    """Two namespaces, their pod runners, and an operator that manages Redis users there."""
    core = k8s_client.CoreV1Api(k8s_api)
    names = [f"t-users-{team}-{uuid.uuid4().hex[:6]}" for team in ("a", "b")]
    for name in names:
        meta = k8s_client.V1ObjectMeta(name=name, labels={"newfuse.io/test": "true"})
        core.create_namespace(k8s_client.V1Namespace(metadata=meta))
    runners = [PodRunnerProcess(REPO / ".local" / "test-podrunner" / name) for name in names]
    for runner, name in zip(runners, names, strict=True):
        runner.up(cluster.kubeconfig, redis_server.url, print, namespace=name)
    scoped = OperatorProcess(
        cluster.kubeconfig,
        redis_server.url,
        operator.log_path.with_name("test-operator-redis-users.log"),
        NEWFUSE_NAMESPACES=",".join(names),
        NEWFUSE_MANAGE_REDIS_USERS="true",
    )
    operator.kill()
    scoped.start()
    try:
        yield Fleets(k8s_api, names[0]), Fleets(k8s_api, names[1]), runners
    finally:
        scoped.kill()
        operator.start()
        for runner in runners:
            runner.down()
        for name in names:
            core.delete_namespace(name)


def _secret_url(core: k8s_client.CoreV1Api, namespace: str, fleet: str) -> str:
    secret = core.read_namespaced_secret(acl.secret_name(fleet), namespace)
    return base64.b64decode(secret.data[acl.SECRET_URL_KEY]).decode()


def _denied(call: object) -> str:
    with pytest.raises(redis.exceptions.NoPermissionError) as refused:
        call()  # type: ignore[operator]
    return str(refused.value)


def test_each_fleet_logs_in_as_its_own_user_and_cannot_touch_another(
    teams: tuple[Fleets, Fleets, list[PodRunnerProcess]],
    redis_client: redis.Redis,
    k8s_api: k8s_client.ApiClient,
) -> None:
    team_a, team_b, (runner_a, runner_b) = teams
    core = k8s_client.CoreV1Api(k8s_api)
    start_fleet(team_a, runner_a, redis_client, "worker", 1)
    start_fleet(team_b, runner_b, redis_client, "worker", 1)
    keys_a, keys_b = FleetKeys(team_a.namespace, "worker"), FleetKeys(team_b.namespace, "worker")

    [pod] = team_a.pods("worker")
    env = {e.name: e for e in pod.spec.containers[0].env}
    assert env["NEWFUSE_REDIS_URL"].value_from.secret_key_ref.name == acl.secret_name("worker")
    secret = core.read_namespaced_secret(acl.secret_name("worker"), team_a.namespace)
    [owner] = secret.metadata.owner_references or []
    assert (owner.kind, owner.name) == ("NewFuseAgent", "worker")

    as_a = redis.Redis.from_url(
        _secret_url(core, team_a.namespace, "worker"), decode_responses=True
    )
    assert as_a.acl_whoami() == acl.user_name(keys_a)
    assert as_a.hlen(keys_a.agents) == 1, "A's agent registered under A's own user"
    # Its agent works under that user: a task in, a result out.
    redis_client.hset(keys_a.task_index, "t-1", "x")
    as_a.xadd(keys_a.tasks(Priority.NORMAL), {"task_id": "t-1", "envelope": _echo(keys_a)})
    wait_for(lambda: as_a.hexists(keys_a.result_index, "t-1"), 30, what="A's task done")
    # B's keys and channels are out of A's reach.
    for refusal in (
        _denied(lambda: as_a.hgetall(keys_b.agents)),
        _denied(lambda: as_a.xadd(keys_b.tasks(Priority.NORMAL), {"envelope": "{}"})),
        _denied(lambda: as_a.publish(keys_b.coordination_channel, "drain")),
        _denied(lambda: as_a.keys("*")),
    ):
        assert "NOPERM" in refusal or "permission" in refusal.lower(), refusal
    as_a.close()

    team_a.custom.delete_namespaced_custom_object(
        GROUP, VERSION, team_a.namespace, PLURAL, "worker"
    )
    wait_for(lambda: redis_client.acl_getuser(acl.user_name(keys_a)) is None, 60, what="A's user")
    assert redis_client.acl_getuser(acl.user_name(keys_b)) is not None, "B keeps its user"

    def secret_gone() -> bool:
        try:
            core.read_namespaced_secret(acl.secret_name("worker"), team_a.namespace)
        except k8s_client.ApiException as exc:
            return bool(exc.status == 404)
        return False

    wait_for(secret_gone, 60, what="A's Secret garbage-collected with the fleet")


def _echo(keys: FleetKeys) -> str:
    now = dt.datetime.now(dt.UTC)
    to = keys.audience(Channel.TASKS)
    raw = encode(MessageType.TASK, {"task_id": "t-1", "handler": "echo"}, "c", now=now, audience=to)
    return raw.decode()
