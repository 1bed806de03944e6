"""With NEWFUSE_MANAGE_REDIS_USERS and NEWFUSE_PER_FLEET_KEYS, fleets share no credential.

An operator scoped to two namespaces (the session operator is stopped meanwhile, so only it acts
there) makes, per fleet, a Redis user confined to the fleet's keys and channels and a signing
key, each in a Secret the fleet owns. Agents work under them; with team A's Redis credentials,
team B's keys and channels answer NOPERM, and a task signed with A's key is refused by B; the
operator signs each fleet's drain notices with that fleet's key (a phased rollout completes);
deleting a fleet deletes its user, and the garbage collector its Secrets.
"""

from __future__ import annotations

import base64
import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import redis
from kubernetes import client as k8s_client

from harness import FAST_AGENT_ENV, Cluster, Fleets, OperatorProcess, RedisHandle, start_fleet
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.adapters.taskclient import StreamEntries
from newfuse.api.v1alpha1 import GROUP, PLURAL, VERSION
from newfuse.core import acl
from newfuse.runtime import fleet_keys
from newfuse.wire.envelope import MessageType, encode
from newfuse.wire.keys import FleetKeys
from newfuse.wire.signing import Channel, Signer
from newfuse.wire.tasks import Priority
from rollouts import FAST_PHASED, Traffic, every_task_accounted_for, wait_phase

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
        NEWFUSE_PER_FLEET_KEYS="true",
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


def _secret_value(core: k8s_client.CoreV1Api, namespace: str, name: str, key: str) -> str:
    secret = core.read_namespaced_secret(name, namespace)
    return base64.b64decode(secret.data[key]).decode()


def _denied(call: object) -> str:
    with pytest.raises(redis.exceptions.NoPermissionError) as refused:
        call()  # type: ignore[operator]
    return str(refused.value)


def test_fleets_share_no_credential_and_cannot_touch_each_other(
    teams: tuple[Fleets, Fleets, list[PodRunnerProcess]],
    redis_client: redis.Redis,
    redis_server: RedisHandle,
    k8s_api: k8s_client.ApiClient,
) -> None:
    redis_url = redis_server.url
    team_a, team_b, (runner_a, runner_b) = teams
    core = k8s_client.CoreV1Api(k8s_api)
    start_fleet(team_a, runner_a, redis_client, "worker", 2, rollout=FAST_PHASED)
    start_fleet(team_b, runner_b, redis_client, "worker", 1)
    keys_a, keys_b = FleetKeys(team_a.namespace, "worker"), FleetKeys(team_b.namespace, "worker")

    pod = team_a.pods("worker")[0]
    env = {e.name: e for e in pod.spec.containers[0].env}
    assert env["NEWFUSE_REDIS_URL"].value_from.secret_key_ref.name == acl.secret_name("worker")
    secret = core.read_namespaced_secret(acl.secret_name("worker"), team_a.namespace)
    [owner] = secret.metadata.owner_references or []
    assert (owner.kind, owner.name) == ("NewFuseAgent", "worker")

    url_a = _secret_value(core, team_a.namespace, acl.secret_name("worker"), acl.SECRET_URL_KEY)
    key_a, key_b = (
        _secret_value(core, team.namespace, fleet_keys.secret_name("worker"), fleet_keys.KEY)
        for team in (team_a, team_b)
    )
    assert key_a != key_b, "a signing key per fleet"
    assert env["NEWFUSE_SIGNING_KEY"].value_from.secret_key_ref.name == "worker-newfuse-signing"
    assert env["NEWFUSE_REQUIRE_SIGNATURES"].value == "true"
    as_a = redis.Redis.from_url(url_a, decode_responses=True)
    assert as_a.acl_whoami() == acl.user_name(keys_a)
    assert as_a.hlen(keys_a.agents) == 2, "A's agents registered under A's own user"
    # Its agent works under that user: a task in, a result out.
    redis_client.hset(keys_a.task_index, "t-1", "x")
    as_a.xadd(keys_a.tasks(Priority.NORMAL), {"task_id": "t-1", "envelope": _echo(keys_a, key_a)})
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
    # A task signed with A's key, copied into B's stream (by someone who may write there).
    redis_client.xadd(keys_b.tasks(Priority.NORMAL), {"envelope": _echo(keys_b, key_a)})
    wait_for(lambda: redis_client.xlen(keys_b.dead_letters) >= 1, 30, what="B's dead letter")
    [(_, letter)] = cast(StreamEntries, redis_client.xrange(keys_b.dead_letters))
    assert letter["reason"] == "unknown_key"

    # A phased rollout: the operator drains A's old agents with notices signed with A's key.
    with Traffic(redis_url, team_a.namespace, "worker", signing_key=key_a.encode()) as traffic:
        team_a.patch_spec("worker", env=[*FAST_AGENT_ENV, {"name": "X_ROLL", "value": "1"}])
        wait_phase(team_a, "worker", "Completed")
    every_task_accounted_for(redis_client, keys_a, [*traffic.ids, "t-1"])
    # Every agent's log, the old revision's (gone from the runner's list) included.
    logs = "".join(f.read_text(errors="replace") for f in (runner_a.state_dir / "logs").glob("*"))
    assert "drain notice from newfuse-operator" in logs, "old agents took the operator's notice"
    assert "refused a coordination message" not in logs

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


def _echo(keys: FleetKeys, key: str) -> str:
    now = dt.datetime.now(dt.UTC)
    to, signer = keys.audience(Channel.TASKS), Signer(key.encode())
    payload = {"task_id": "t-1", "handler": "echo"}
    return encode(MessageType.TASK, payload, "c", now=now, audience=to, signer=signer).decode()
