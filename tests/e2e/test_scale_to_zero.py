"""Scale to zero and back through `/scale`, the way KEDA does with `minReplicaCount: 0`.

KEDA wakes a fleet at zero when the consumer-group lag of its task streams goes above the
activation threshold; that lag exists only on a group. This test plays KEDA's two parts, reading
exactly what its redis-streams scaler reads (XINFO GROUPS of the sample's streams and group, see
crds/samples/autoscaling/) and writing `/scale`, and shows the operator's part: a fleet that
scales to zero loses none of the tasks submitted meanwhile, its groups exist (also in a Redis that
lost them while nobody ran), and one agent back takes every task once.
"""

from __future__ import annotations

import json
import time
from typing import Any, cast

import redis

from harness import Fleets, Kubectl, RedisHandle, start_fleet, submit
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.wire.keys import FleetKeys
from newfuse.wire.tasks import CONSUMER_GROUP, Priority


def lag(client: redis.Redis, keys: FleetKeys) -> int | None:
    """What KEDA's redis-streams scaler reads: the group's lag on the normal stream, if any."""
    groups = client.xinfo_groups(keys.tasks(Priority.NORMAL))
    for group in groups:
        if group["name"] == CONSUMER_GROUP:
            return int(group["lag"])
    return None


def test_a_fleet_at_zero_keeps_its_tasks_and_its_lag_and_wakes_to_finish_them(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
    kubectl: Kubectl,
) -> None:
    ns = fleets.namespace
    keys = FleetKeys(ns, "sleepy")
    start_fleet(fleets, pod_runner, redis_client, "sleepy", 2)

    kubectl("scale", "-n", ns, "nfa/sleepy", "--replicas=0")
    wait_for(lambda: not fleets.pods("sleepy"), 90, what="no agent pods")
    status = wait_for(lambda: _status_at_zero(fleets), 60, what="status at zero replicas")
    assert status.get("phase") not in ("Failed", "Degraded"), status

    # A Redis that lost everything while the fleet slept: the operator gives the groups back.
    for priority in Priority:
        redis_client.delete(keys.tasks(priority))
    kubectl("annotate", "-n", ns, "nfa/sleepy", "example.com/nudge=1")  # any event reconciles
    wait_for(lambda: _has_group(redis_client, keys), 60, what="the consumer groups back")

    out = submit("sleepy", ns, redis_server.url, "--count", "20", "--payload", '{"n": 1}')
    assert "submitted 20 task(s)" in out
    assert lag(redis_client, keys) == 20, "the lag KEDA activates on counts every waiting task"
    assert redis_client.hlen(keys.result_index) == 0

    woke = time.monotonic()
    kubectl("scale", "-n", ns, "nfa/sleepy", "--replicas=1")  # KEDA's activation
    wait_for(lambda: redis_client.hlen(keys.result_index) >= 1, 120, what="a first result")
    first_result_s = time.monotonic() - woke
    wait_for(lambda: redis_client.hlen(keys.result_index) >= 20, 120, what="20 results")
    assert redis_client.xlen(keys.result_stream) == 20, "each task once, none twice"
    assert lag(redis_client, keys) == 0
    scale = json.loads(kubectl("get", "-n", ns, "nfa/sleepy", "--subresource=scale", "-o", "json"))
    assert scale["spec"]["replicas"] == 1, "the operator never writes replicas back"
    print(f"from /scale 1 to the first result: {first_result_s:.1f}s")


def _status_at_zero(fleets: Fleets) -> dict[str, Any] | None:
    status = cast(dict[str, Any], fleets.get("sleepy").get("status") or {})
    return status if status.get("replicas", 0) == 0 else None


def _has_group(client: redis.Redis, keys: FleetKeys) -> bool:
    return all(
        any(g["name"] == CONSUMER_GROUP for g in client.xinfo_groups(keys.tasks(p)))
        for p in Priority
        if client.exists(keys.tasks(p))
    ) and bool(client.exists(keys.tasks(Priority.NORMAL)))
