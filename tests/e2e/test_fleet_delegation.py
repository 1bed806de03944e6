"""Delegation between the operator's fleets: a chain completes, a cycle is broken as a deadlock.

Every fleet has one agent with concurrency 1 and the default task settings; the built-in
`delegate` handler calls the next fleet. A waiting task holds no slot, so chains through
one-slot fleets complete, and a cycle starves nobody: the agents fail its youngest waiter.
"""

from __future__ import annotations

import json
from typing import Any, cast

import pytest
import redis

from harness import Fleets, RedisHandle, start_fleet, submit, wait_results
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.adapters.taskclient import StreamEntries
from newfuse.wire.keys import FleetKeys

pytestmark = pytest.mark.usefixtures("operator")
ONE_SLOT: dict[str, Any] = {"concurrency": 1, "capabilities": ["delegate", "echo"]}
# The detector's bound: every agent sweeps its fleet's waits every 2 s (WAIT_SWEEP_TICKS), so a
# cycle is broken within 3 s of closing; the test allows twice that for a loaded machine.
BOUND_SECONDS = 6.0


def test_a_chain_a_b_c_of_one_slot_fleets_completes(
    fleets: Fleets, pod_runner: PodRunnerProcess, redis_client: redis.Redis,
    redis_server: RedisHandle,
) -> None:  # fmt: skip
    ns, url = fleets.namespace, redis_server.url
    for name in ("hop-a", "hop-b", "hop-c"):
        start_fleet(fleets, pod_runner, redis_client, name, 1, fast=False, **ONE_SLOT)
    last = {"fleet": "hop-c", "handler": "echo", "input": "end of the line"}
    chain = {"fleet": "hop-b", "handler": "delegate", "input": last}
    ids = [f"chain-{i}" for i in range(4)]
    for task_id in ids:
        submit("hop-a", ns, url, "--id", task_id, "--handler", "delegate",
               "--payload", json.dumps(chain))  # fmt: skip
    results = wait_results(url, ns, "hop-a", ids, 90)
    assert [r.output for r in results] == ["end of the line"] * 4, [r.error for r in results]


def test_a_cycle_between_two_one_slot_fleets_is_broken_as_a_deadlock(
    fleets: Fleets, pod_runner: PodRunnerProcess, redis_client: redis.Redis,
    redis_server: RedisHandle,
) -> None:  # fmt: skip
    ns, url = fleets.namespace, redis_server.url
    for name in ("ping", "pong"):
        start_fleet(fleets, pod_runner, redis_client, name, 1, fast=False, **ONE_SLOT)
    back = {"fleet": "ping", "handler": "delegate", "taskId": "c-1", "input": None}
    there = {"fleet": "pong", "handler": "delegate", "taskId": "c-1-pong", "input": back}
    submit("ping", ns, url, "--id", "c-1", "--handler", "delegate", "--payload", json.dumps(there))

    [victim] = wait_results(url, ns, "pong", ["c-1-pong"], 60)
    [first] = wait_results(url, ns, "ping", ["c-1"], 60)
    cycle = f"{ns}/pong/c-1-pong -> {ns}/ping/c-1 -> {ns}/pong/c-1-pong"
    assert victim.reason == "deadlock"
    assert cycle in (victim.error or "")
    assert first.reason == "handler_failed"
    assert f"delegated task {ns}/pong/c-1-pong failed: deadlock" in (first.error or "")
    [(_, entry)] = cast(StreamEntries, redis_client.xrange(FleetKeys(ns, "pong").deadlocks))
    broken_after = victim.finished_at.timestamp() - int(entry["since_ms"]) / 1000
    assert broken_after < BOUND_SECONDS
    print(f"deadlock broken {broken_after:.2f}s after its cycle closed")

    # Nobody starved: both one-slot fleets serve new work.
    for name in ("ping", "pong"):
        submit(name, ns, url, "--id", f"after-{name}", "--handler", "echo", "--payload", '"ok"')
        [after] = wait_results(url, ns, name, [f"after-{name}"], 30)
        assert after.output == "ok"

    def reported() -> bool:
        metrics = fleets.get("pong").get("status", {}).get("metrics") or {}
        return bool(metrics.get("deadlocksBroken") == 1)

    wait_for(reported, 60, what="status.metrics.deadlocksBroken of pong")
    events: list[Any] = []

    def posted() -> bool:
        found = fleets.core.list_namespaced_event(ns, field_selector="reason=DeadlockBroken")
        events[:] = found.items
        return bool(events)

    wait_for(posted, 30, what="the DeadlockBroken Event")
    assert [e.involved_object.name for e in events] == ["pong"]
    assert "1 cycle(s) of delegations broken" in events[0].message
