"""The protocol-version gate end to end: live 1.x and 2.x traffic, default settings throughout.

The stable revision speaks 1.x and 2.x; the canary (NEWFUSE_PROTOCOL_SPEAKS=2, standing in for an
image that dropped 1.x) only 2.x. While 1.x tasks keep arriving, the rollout holds before stage 3
with a condition naming 1.x, and the canary passes every 1.x task it takes on to a stable agent.
Once the 1.x traffic stops, the default quiet period (300 s) passes and the rollout completes.
Every task of both streams gets exactly one successful result; no 1.x task meets the canary.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import time
from typing import Any

import redis

from harness import FAST_AGENT_ENV, Fleets, Kubectl, RedisHandle, start_fleet
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.adapters.taskclient import TaskClient
from newfuse.wire.keys import FleetKeys
from newfuse.wire.tasks import ResultPayload, ResultStatus
from rollouts import Traffic, every_task_accounted_for, rollout_of, wait_phase

PHASED = {"strategy": "Phased"}  # every default: 60 s soak, 20 tasks, 300 s protocol quiet
ONLY_2X = [*FAST_AGENT_ENV, {"name": "NEWFUSE_PROTOCOL_SPEAKS", "value": "2"}]
QUIET_SECONDS = 300  # ProtocolGateSpec's default


async def _results(url: str, ns: str, fleet: str, ids: list[str]) -> list[ResultPayload | None]:
    client = TaskClient.from_url(url, ns, fleet, signing_key=None)
    try:
        return [await client.result(task_id) for task_id in ids]
    finally:
        await client.aclose()


def _progressing(fleets: Fleets, name: str) -> dict[str, Any]:
    conditions = fleets.get(name)["status"]["conditions"]
    return next(c for c in conditions if c["type"] == "Progressing")


def _at(entry: dict[str, Any]) -> float:
    return dt.datetime.fromisoformat(entry["at"]).timestamp()


def test_stage_3_holds_while_1x_traffic_is_live_and_completes_once_it_stops(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
    kubectl: Kubectl,
) -> None:
    ns, name = fleets.namespace, "speakers"
    body = start_fleet(fleets, pod_runner, redis_client, name, 2, fast=False, rollout=PHASED)
    stable = body["status"]["updateRevision"]
    url = redis_server.url

    with Traffic(url, ns, name, per_second=30, protocol_version="2.0") as two:
        with Traffic(url, ns, name, per_second=30, protocol_version="1.0") as one:
            fleets.patch_spec(name, env=ONLY_2X)
            held = wait_for(
                lambda: (state := rollout_of(fleets, name)).get("held") and state,
                300,
                what="the rollout held before stage 3",
            )
            condition = _progressing(fleets, name)
            # A while on hold under both streams: the canary keeps passing 1.x tasks on.
            time.sleep(30)
            assert rollout_of(fleets, name)["stage"] == "Initial", "never towards stage 3"
        stopped = time.time()
        completed = wait_phase(fleets, name, "Completed", timeout=QUIET_SECONDS + 300)

    canary = held["canaryRevision"]
    assert "protocol 1.x" in held["held"]
    assert f"canary revision {canary} does not speak" in held["held"]
    assert (condition["status"], condition["reason"]) == ("True", "ProtocolVersionsInUse")
    assert "protocol 1.x" in condition["message"]
    history = completed["history"]
    [hold] = [h for h in history if h["reason"] == "ProtocolVersionsInUse"]
    released = next(h for h in history if h["reason"] == "GatePassed" and _at(h) > _at(hold))
    waited_after_stop = _at(released) - stopped
    print(
        f"figures: held {_at(released) - _at(hold):.0f}s; released {waited_after_stop:.0f}s "
        f"after the 1.x traffic stopped; {len(one.ids)} 1.x and {len(two.ids)} 2.x tasks"
    )
    assert QUIET_SECONDS - 5 <= waited_after_stop <= QUIET_SECONDS + 60, waited_after_stop
    events = json.loads(kubectl("get", "events", "-n", ns, "-o", "json"))["items"]
    assert any(
        e["reason"] == "ProtocolVersionsInUse" and e["involvedObject"]["name"] == name
        for e in events
    )

    keys = FleetKeys(ns, name)
    every_task_accounted_for(redis_client, keys, one.ids + two.ids)
    ones = asyncio.run(_results(url, ns, name, one.ids))
    twos = asyncio.run(_results(url, ns, name, two.ids))
    assert all(r is not None and r.status is ResultStatus.SUCCEEDED for r in ones + twos)
    assert {r.revision for r in ones if r is not None} == {stable}, "1.x never met the canary"
    assert canary in {r.revision for r in twos if r is not None}, "the canary served 2.x"
    assert redis_client.xlen(keys.dead_letters) == 0
