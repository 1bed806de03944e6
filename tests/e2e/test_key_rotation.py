"""Signing keys rotate under live traffic without a refused task; a canary with a wrong key rolls
back by itself.

Rotation is accept first, then sign (README, Key rotation): every agent learns the new key before
any client signs with it, and every agent still accepts the old key while tasks signed with it
wait in the backlog. A canary that holds the wrong key refuses the fleet's work; those refusals
count against its gate, so it rolls back instead of idling through its soak, and the tasks it
refused wait in the DLQ to be requeued.
"""

from __future__ import annotations

import asyncio
from typing import Any, cast

import redis
from kubernetes import client as k8s_client

from harness import Fleets, RedisHandle, start_fleet
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.adapters.taskclient import StreamEntries, TaskClient
from newfuse.core import naming
from newfuse.wire.keys import FleetKeys
from rollouts import FAST_PHASED, Traffic, every_task_accounted_for, rollout_of, wait_phase

OLD = "the-old-signing-key-0123456789abcdef"
NEW = "the-new-signing-key-fedcba9876543210"
WRONG = "a-key-nobody-signs-with-0123456789ab"


def _secret(api: k8s_client.ApiClient, namespace: str, name: str, **data: str) -> None:
    k8s_client.CoreV1Api(api).create_namespaced_secret(
        namespace,
        k8s_client.V1Secret(metadata=k8s_client.V1ObjectMeta(name=name), string_data=data),
    )


def _signing(secret: str, accept: bool = False) -> dict[str, Any]:
    spec: dict[str, Any] = {"keySecretRef": {"name": secret, "key": "key"}, "required": True}
    if accept:
        spec["acceptKeySecretRef"] = {"name": secret, "key": "accept"}
    return spec


def _all_on(fleets: Fleets, name: str, revision: str, replicas: int) -> None:
    wait_for(
        lambda: (
            {p.metadata.labels[naming.LABEL_REVISION] for p in fleets.pods(name)} == {revision}
            and len(fleets.live_pod_names(name)) == replicas
        ),
        90,
        what=f"every agent on {revision}",
    )


def test_rotating_the_key_under_live_traffic_refuses_and_loses_nothing(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
    k8s_api: k8s_client.ApiClient,
) -> None:
    ns = fleets.namespace
    _secret(k8s_api, ns, "v1", key=OLD)
    _secret(k8s_api, ns, "v2", key=OLD, accept=NEW)  # step 1: accept the new key
    _secret(k8s_api, ns, "v3", key=NEW, accept=OLD)  # step 3: sign with it, still accept the old
    spec: dict[str, Any] = {"rollout": FAST_PHASED, "signing": _signing("v1")}
    start_fleet(fleets, pod_runner, redis_client, "rotating", 3, **spec)
    keys = FleetKeys(ns, "rotating")
    with Traffic(redis_server.url, ns, "rotating", signing_key=OLD.encode()) as traffic:
        fleets.patch_spec("rotating", signing=_signing("v2", accept=True))
        done = wait_phase(fleets, "rotating", "Completed")
        _all_on(fleets, "rotating", done["stableRevision"], 3)
        traffic.signing_key = NEW.encode()  # step 2: clients switch; every agent accepts it
        before = len(traffic.ids)
        wait_for(lambda: len(traffic.ids) >= before + 60, 30, what="tasks signed with the new key")
        fleets.patch_spec("rotating", signing=_signing("v3", accept=True))
        wait_for(
            lambda: rollout_of(fleets, "rotating").get("canaryRevision") != done["canaryRevision"],
            60,
            what="the second rollout to start",
        )
        second = wait_phase(fleets, "rotating", "Completed")
        _all_on(fleets, "rotating", second["stableRevision"], 3)
    every_task_accounted_for(redis_client, keys, traffic.ids)
    letters = cast(StreamEntries, redis_client.xrange(keys.dead_letters))
    assert letters == [], "not one task refused during the rotation"
    print(f"{len(traffic.ids)} tasks through two rollouts and a client key switch, none refused")


def test_a_canary_holding_a_wrong_key_rolls_back_by_itself(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
    k8s_api: k8s_client.ApiClient,
) -> None:
    ns = fleets.namespace
    _secret(k8s_api, ns, "good", key=OLD)
    _secret(k8s_api, ns, "wrong", key=WRONG)
    spec: dict[str, Any] = {"rollout": FAST_PHASED, "signing": _signing("good")}
    body = start_fleet(fleets, pod_runner, redis_client, "keyed", 3, **spec)
    stable = body["status"]["updateRevision"]
    keys = FleetKeys(ns, "keyed")
    with Traffic(redis_server.url, ns, "keyed", signing_key=OLD.encode()) as traffic:
        fleets.patch_spec("keyed", signing=_signing("wrong"))
        rolled = wait_phase(fleets, "keyed", "RolledBack")
        _all_on(fleets, "keyed", stable, 3)
    verdict = rolled["lastVerdict"]
    assert verdict["result"] == "Failed"
    assert "refused unrun" in verdict["reason"], verdict["reason"]
    letters = cast(StreamEntries, redis_client.xrange(keys.dead_letters))
    assert letters, "the canary refused tasks"
    assert {fields["reason"] for _, fields in letters} == {"unknown_key"}

    async def requeue() -> None:
        client = TaskClient.from_url(redis_server.url, ns, "keyed", signing_key=OLD.encode())
        try:
            for entry_id, _ in letters:
                assert await client.requeue_dead_letter(entry_id, force=True) is not None
        finally:
            await client.aclose()

    # Security refusals need --force: here they were the fleet's own tasks, the canary's key wrong.
    asyncio.run(requeue())
    every_task_accounted_for(redis_client, keys, traffic.ids)
    print(f"canary refused {len(letters)} task(s), rolled back; all {len(traffic.ids)} done")
