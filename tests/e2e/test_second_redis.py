"""A fleet on a second redis-server is watched, rolled out and cleaned up there.

Its spec.redis.urlSecretRef names a server the operator was not started with. The operator reads
that Secret and talks to the fleet's own server: heartbeats reach the fleet's status, a phased
rollout's gates see the agents' work and complete, and deleting the fleet removes its keys from
that server, with none ever written to the operator's own.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from kubernetes import client as k8s_client

from harness import FAST_AGENT_ENV, Fleets, RedisHandle, start_fleet
from localcluster import RedisServer, wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.api.v1alpha1 import GROUP, PLURAL, VERSION
from newfuse.wire.keys import FleetKeys
from rollouts import FAST_PHASED, Traffic, every_task_accounted_for, wait_phase


@pytest.fixture
def second_redis(tmp_path: Path) -> Iterator[str]:
    """Another redis-server, on its own port."""
    server = RedisServer(tmp_path / f"redis-{uuid.uuid4().hex[:6]}")
    info = server.up()
    yield info.url
    server.down()


def test_a_fleet_on_a_second_redis_server_rolls_out_reports_and_leaves_no_key(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
    k8s_api: k8s_client.ApiClient,
    second_redis: str,
) -> None:
    ns = fleets.namespace
    k8s_client.CoreV1Api(k8s_api).create_namespaced_secret(
        ns,
        k8s_client.V1Secret(
            metadata=k8s_client.V1ObjectMeta(name="own-redis"), string_data={"url": second_redis}
        ),
    )
    own = redis.Redis.from_url(second_redis, decode_responses=True)
    spec: dict[str, Any] = {
        "rollout": FAST_PHASED,
        "redis": {"urlSecretRef": {"name": "own-redis", "key": "url"}},
    }
    start_fleet(fleets, pod_runner, own, "elsewhere", 2, **spec)
    keys = FleetKeys(ns, "elsewhere")
    wait_for(
        lambda: own.exists(keys.fleet_state) and own.hlen(keys.agents) == 2,
        30,
        what="the operator's mirror and the agents' registrations on the fleet's server",
    )

    with Traffic(second_redis, ns, "elsewhere") as traffic:
        fleets.patch_spec("elsewhere", env=[*FAST_AGENT_ENV, {"name": "X_ROLL", "value": "1"}])
        done = wait_phase(fleets, "elsewhere", "Completed")
    assert all(g["verdict"]["measured"]["tasks"] >= 5 for g in done["history"] if "verdict" in g)
    every_task_accounted_for(own, keys, traffic.ids)

    # The status folds the agents' counters on its next reconcile: wait for it to catch up with
    # the last results rather than read the first non-zero count.
    def counted() -> int:
        metrics = fleets.get("elsewhere")["status"].get("metrics") or {}
        return int(metrics.get("tasksCompleted") or 0)

    wait_for(
        lambda: counted() >= len(traffic.ids),
        60,
        what=f"the fleet's status counting all {len(traffic.ids)} tasks",
    )
    assert not list(redis_client.scan_iter(match=keys.pattern)), "nothing on the operator's Redis"

    fleets.custom.delete_namespaced_custom_object(GROUP, VERSION, ns, PLURAL, "elsewhere")
    wait_for(
        lambda: not list(own.scan_iter(match=keys.pattern)),
        90,
        what="every key of the deleted fleet removed from its own server",
    )
    own.close()
