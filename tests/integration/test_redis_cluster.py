"""The task flow on a Redis Cluster (3 primaries, 3 replicas): the same tests, a cluster's URL.

Every key of a fleet shares the hash tag `{ns/fleet}`, so each fleet lives in one slot and its
scripts and transactions run on one node; fleets, many of them, spread over every primary. This
module re-runs the core task-flow tests (submit, an agent processes, exactly one result; retries
and the dead letter; reclaim of a dead consumer's entries; priorities; idempotent ids) with
`redis_server` overridden to the session's cluster (a `redis+cluster://` URL), so the agents, the
task client and the scripts are the shipped ones, each opening a cluster client from that URL.
"""

from __future__ import annotations

import asyncio
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import cast

import pytest
import redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.exceptions import NoPermissionError

from harness import RedisClusterHandle, RedisHandle, sync_redis

# The core task-flow tests, collected again here: pytest runs them with this module's fixtures.
from integration.test_agent_runtime_delivery import (  # noqa: F401
    test_a_dead_consumers_tasks_are_reclaimed_and_completed_once,
    test_high_priority_backlog_is_served_before_normal,
    test_task_ids_are_idempotent_and_signed_replays_refused,
    test_two_agents_complete_every_task_exactly_once,
)
from integration.test_agent_runtime_failures import (
    test_retries_then_dead_letter_with_a_failed_result,  # noqa: F401
)

# Fleets that wait on each other's tasks: each script still touches one fleet's slot.
from integration.test_delegation import (  # noqa: F401
    test_a_chain_of_three_fleets_with_one_slot_each_completes,
    test_a_cycle_between_two_fleets_is_broken_at_its_youngest_waiter,
)
from integration.test_reclaim import test_idle_entries_behind_a_busy_head_are_reclaimed  # noqa: F401
from integration.test_task_lifecycle import (  # noqa: F401
    keys,
    test_a_deadline_that_passed_in_the_queue_ends_the_task_with_reason_deadline,
    test_timeouts_end_a_task_failed_with_reason_timeout,
)
from integration.test_workflows import (  # noqa: F401
    test_a_50_task_dag_across_three_fleets_reduces_to_the_right_sum,
    test_a_saga_compensates_in_reverse_once_each_or_commits,
)
from localcluster.redis_cluster import LocalRedisCluster
from newfuse.adapters.redis_connect import connect, is_cluster, redacted
from newfuse.adapters.redis_guard import Breaker, GuardedRedisCluster, guard
from newfuse.adapters.redis_store import RedisStore
from newfuse.adapters.taskclient import TaskClient, TaskSpec
from newfuse.core import acl
from newfuse.wire.keys import FleetKeys

FLEETS = 48


@pytest.fixture(scope="module")
def redis_server(redis_cluster: RedisClusterHandle) -> RedisHandle:
    """This module's Redis is the cluster (no server object: nothing here restarts it)."""
    return RedisHandle(redis_cluster.url, None)


def test_a_cluster_url_opens_a_guarded_cluster_client(redis_cluster: RedisClusterHandle) -> None:
    url = redis_cluster.url
    assert is_cluster(url)
    assert not is_cluster("redis://127.0.0.1:6379/0")
    assert redacted("rediss+cluster://u:secret@h:1/0") == "rediss+cluster://u:***@h:1/0"

    async def go() -> None:
        plain = connect(url, timeout=5)
        assert isinstance(cast(object, plain), AsyncRedisCluster)
        breaker = Breaker(5)
        client = guard(plain, breaker)
        assert isinstance(cast(object, client), GuardedRedisCluster)
        try:
            assert await client.ping()
            pipe = client.pipeline(transaction=True)
            pipe.set("{nf-test}a", "1")
            pipe.incr("{nf-test}a")
            assert await pipe.execute() == [True, 2]
            await client.delete("{nf-test}a")
        finally:
            await client.aclose()
            await plain.aclose()
        assert breaker.closed

    asyncio.run(go())


def test_a_fleets_own_redis_user_works_on_every_node(redis_cluster: RedisClusterHandle) -> None:
    """The operator's per-fleet user exists on every node (replicas too: one may be promoted)."""
    mine, other = (FleetKeys("acl", f"f{uuid.uuid4().hex[:8]}") for _ in range(2))
    user, password = acl.user_name(mine), uuid.uuid4().hex

    async def go() -> None:
        store = RedisStore(redis_cluster.url)
        await store.set_acl_user(user, acl.rules(mine, password))
        try:
            for node in _nodes(redis_cluster.url):
                assert user in node.acl_users(), f"{user} missing on a node"
                node.close()
            url = acl.url_for(redis_cluster.url, user, password)
            own = TaskClient.from_url(url, mine.namespace, mine.fleet)
            theirs = TaskClient.from_url(url, other.namespace, other.fleet)
            await own.submit(TaskSpec("echo", 1, task_id="t1"))
            with pytest.raises(NoPermissionError):
                await theirs.submit(TaskSpec("echo", 1, task_id="t1"))
            await own.aclose()
            await theirs.aclose()
        finally:
            await store.delete_acl_user(user)
            await store.close()
        assert all(user not in node.acl_users() for node in _nodes(redis_cluster.url))
        client = sync_redis(redis_cluster.url)
        client.delete(*mine.all_keys())
        client.close()

    asyncio.run(go())


def _nodes(url: str, primaries_only: bool = False) -> list[redis.Redis]:
    cluster = redis.RedisCluster.from_url(url.replace("+cluster://", "://", 1))
    try:
        nodes = cluster.get_primaries() if primaries_only else cluster.get_nodes()  # type: ignore[no-untyped-call]
        return [sync_redis(f"redis://{n.host}:{n.port}/0") for n in nodes]
    finally:
        cluster.close()


def _primaries(url: str) -> list[redis.Redis]:
    return _nodes(url, primaries_only=True)


@pytest.fixture
def many_fleets(redis_cluster: RedisClusterHandle) -> Iterator[list[FleetKeys]]:
    fleets = [FleetKeys("spread", f"f{uuid.uuid4().hex[:8]}") for _ in range(FLEETS)]
    yield fleets
    client = sync_redis(redis_cluster.url)
    for fleet in fleets:
        client.delete(*fleet.all_keys())
    client.close()


def test_fleets_spread_over_every_primary_each_in_one_slot(
    redis_cluster: RedisClusterHandle, many_fleets: list[FleetKeys]
) -> None:
    url = redis_cluster.url

    async def submit_and_scan() -> dict[FleetKeys, set[str]]:
        found: dict[FleetKeys, set[str]] = {}
        for fleet in many_fleets:
            client = TaskClient.from_url(url, fleet.namespace, fleet.fleet)
            await client.submit(TaskSpec("echo", "x", task_id="t1"))
            # SCAN through the cluster client visits every primary.
            found[fleet] = {k async for k in client.client.scan_iter(match=fleet.pattern)}
            await client.aclose()
        return found

    scanned = asyncio.run(submit_and_scan())
    holders: dict[FleetKeys, set[int]] = {fleet: set() for fleet in many_fleets}
    primaries = _primaries(url)
    assert len(primaries) == 3
    for index, primary in enumerate(primaries):
        for fleet in many_fleets:
            if list(primary.scan_iter(match=fleet.pattern, count=1000)):
                holders[fleet].add(index)
        primary.close()
    for fleet, keys_found in scanned.items():
        assert fleet.task_index in keys_found, "a submission wrote the fleet's index"
        assert fleet.tasks("normal") in keys_found
        assert len(holders[fleet]) == 1, f"{fleet.fleet}'s keys are on one primary"
    used = set().union(*holders.values())
    assert used == {0, 1, 2}, f"{FLEETS} fleets land on every primary, not only {used}"


def test_the_local_cluster_starts_is_reused_and_stops_cleanly(tmp_path: Path) -> None:
    cluster = LocalRedisCluster(tmp_path, node_timeout_ms=1000)
    info = cluster.up()
    try:
        assert not info.reused
        assert len(cluster.pids()) == 6
        assert len(cluster.primaries()) == 3
        assert cluster.up().reused, "a healthy cluster is reused, not made again"
        client = sync_redis(info.url)
        assert client.set("{nf-tooling}k", "v")
        client.close()
    finally:
        cluster.down()
    for port in info.ports:
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
    assert not list(tmp_path.glob("node-*")), "down() removes the nodes' data"
