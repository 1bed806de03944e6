"""A primary of the Redis Cluster dies under load (SIGKILL) and its replica takes over.

What is promised (README, "Redis Cluster"): the fleet is served again within the cluster's node
timeout plus a few seconds; every task whose submission survived the failover gets exactly one
result; and what a failover can take back is bounded by Redis's asynchronous replication, the
writes the dead primary acknowledged but had not yet sent to its replica. Such a lost result is
not lost work: its task's acknowledgement went with it, so the task is delivered again and
completed again. A lost submission is lost. The test measures both and prints them.
"""

from __future__ import annotations

import asyncio
import time

import pytest
import redis

from harness import RedisClusterHandle
from newfuse.adapters.taskclient import TaskSpec
from runtime_fleet import Fleet, eventually

# The README's bound, measured here on loopback: rolled-back writes are those of the last few
# milliseconds before the kill, so at most a handful of a few thousand.
MAX_ROLLED_BACK = 25
# node timeout (2 s in the local cluster) + election + clients learning the new topology.
MAX_OUTAGE_SECONDS = 15.0


def _owner_port(url: str, key: str) -> int:
    cluster = redis.RedisCluster.from_url(url.replace("+cluster://", "://", 1))
    try:
        return int(cluster.get_node_from_key(key).port)  # type: ignore[no-untyped-call]
    finally:
        cluster.close()


class Load:
    """Submits tasks one after another, retrying each id until its submission is acknowledged."""

    def __init__(self, fleet: Fleet) -> None:
        self.fleet = fleet
        self.acked: list[str] = []
        self.stop = False
        self.killed_at: float | None = None
        # When the first submission begun after the kill was acknowledged: the fleet is served.
        self.served_again_at: float | None = None

    async def run(self) -> None:
        n = 0
        while not self.stop:
            task_id = f"t{n}"
            began = time.monotonic()
            try:
                await self.fleet.client.submit(TaskSpec("echo", n, task_id=task_id))
            except (redis.RedisError, OSError):  # the failover under way: try the id again
                await asyncio.sleep(0.05)  # pacing a retry, not waiting for a condition
                continue
            if self.killed_at is not None and began > self.killed_at:
                self.served_again_at = self.served_again_at or time.monotonic()
            self.acked.append(task_id)
            n += 1
            await asyncio.sleep(0.002)  # a few hundred tasks/s on this shared machine


def test_a_primary_failing_over_under_load_loses_at_most_the_replication_window(
    redis_cluster: RedisClusterHandle,
) -> None:
    local = redis_cluster.cluster
    if local is None:
        pytest.skip("the cluster is not this tooling's: no node to kill")
    url = redis_cluster.url
    measured: dict[str, float] = {}

    async def scenario() -> None:
        fleet = Fleet(url, "failover")
        keys = fleet.client.keys
        load = Load(fleet)
        try:
            async with fleet.agent("a1", concurrency=8), fleet.agent("a2", concurrency=8):
                loader = asyncio.create_task(load.run())
                await eventually(lambda: _results_at_least(fleet, 300), 30, "300 results")
                victim.append(_owner_port(url, keys.task_index))
                before = set(await fleet.redis.hkeys(keys.result_index))
                acked_before = len(load.acked)
                # Nothing else runs on this loop until the primary is dead.
                load.killed_at = time.monotonic()
                assert local.kill(victim[0])
                await eventually(lambda: _served_again(load), MAX_OUTAGE_SECONDS, "failover")
                assert load.served_again_at is not None
                measured["served_again_s"] = load.served_again_at - load.killed_at
                after = set(await fleet.redis.hkeys(keys.result_index))
                rolled_back = before - after
                await eventually(lambda: _acked_more(load, acked_before + 300), 30, "300 more")
                load.stop = True
                await loader
                acked = set(load.acked)
                await eventually(
                    lambda: _all_done(fleet, acked), 60, "a result for every surviving task"
                )
                stored = set(await fleet.redis.hkeys(keys.result_index))
                indexed = set(await fleet.redis.hkeys(keys.task_index))
                measured.update(
                    submitted=len(acked),
                    results_before_kill=len(before),
                    rolled_back_results=len(rolled_back),
                    rerun_to_a_result=len(rolled_back & stored),
                    lost_submissions=len(acked - indexed),
                    without_result=len(acked - stored),
                )
        finally:
            load.stop = True
            await fleet.close()

    victim: list[int] = []
    try:
        asyncio.run(asyncio.wait_for(scenario(), 180))
    finally:
        # The killed node rejoins as its old replica's replica: the session's cluster is whole.
        if victim and not local.alive(victim[0]):
            local.restart(victim[0])
        local.wait_healthy(60)
    print(f"failover measurements: {measured}")
    assert measured["served_again_s"] < MAX_OUTAGE_SECONDS
    assert measured["rolled_back_results"] <= MAX_ROLLED_BACK
    assert measured["rerun_to_a_result"] == measured["rolled_back_results"], (
        "a rolled-back result's task is delivered again and completed"
    )
    assert measured["lost_submissions"] <= MAX_ROLLED_BACK
    assert measured["without_result"] == measured["lost_submissions"], (
        "every submission the new primary has ends with a result"
    )


async def _results_at_least(fleet: Fleet, n: int) -> bool:
    return int(await fleet.redis.hlen(fleet.client.keys.result_index)) >= n


async def _served_again(load: Load) -> bool:
    return load.served_again_at is not None


async def _acked_more(load: Load, n: int) -> bool:
    return len(load.acked) >= n


async def _all_done(fleet: Fleet, acked: set[str]) -> bool:
    try:
        indexed = set(await fleet.redis.hkeys(fleet.client.keys.task_index))
        stored = set(await fleet.redis.hkeys(fleet.client.keys.result_index))
    except redis.RedisError:
        return False
    return (acked & indexed) <= stored
