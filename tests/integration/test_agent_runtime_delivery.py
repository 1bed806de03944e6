"""The agent runtime against the real Redis: delivery.

Every task is completed exactly once across agents; high priority is served before normal and low;
a dead consumer's tasks are reclaimed; task ids are idempotent and a replayed signed message is
refused. Agents run in this process (tests/runtime_fleet.py).
"""

from __future__ import annotations

from typing import cast

from newfuse.adapters.taskclient import StreamEntries, TaskClient, TaskSpec
from newfuse.wire.state import AgentStatus
from newfuse.wire.taskpolicy import TaskPolicy
from newfuse.wire.tasks import CONSUMER_GROUP, Priority
from runtime_fleet import KEY, Fleet, _count, _dead, eventually, with_fleet


def test_two_agents_complete_every_task_exactly_once(fleet_url: str) -> None:
    async def body(fleet: Fleet) -> None:
        async with fleet.agent("a-0"), fleet.agent("a-1"):
            ids = [
                s.task_id
                async for batch in fleet.client.submit_many(TaskSpec("echo", i) for i in range(300))
                for s in batch
            ]
            await eventually(lambda: _count(fleet, 300), 30, "300 results")
        results = await fleet.results()
        assert sorted(r["task_id"] for r in results) == sorted(ids)
        assert {r["agent_id"] for r in results} == {"a-0", "a-1"}, "both agents took a share"
        assert all(r["status"] == "succeeded" for r in results)
        by_id = {r["task_id"]: r for r in results}
        assert by_id[ids[7]]["output"] == 7
        states = {u.agent_id: u for u in await fleet.client.agents()}
        assert sum(u.state.metrics.tasks_completed for u in states.values()) == 300
        assert all(u.state.status is AgentStatus.INACTIVE for u in states.values()), (
            "drained agents are inactive"
        )

    with_fleet(fleet_url, body)


def test_high_priority_backlog_is_served_before_normal(fleet_url: str) -> None:
    async def body(fleet: Fleet) -> None:
        await fleet.client.submit(TaskSpec("echo", "warm-up"))  # creates the streams
        async for _ in fleet.client.submit_many(
            TaskSpec("echo", f"n{i}", Priority.NORMAL) for i in range(40)
        ):
            pass
        async for _ in fleet.client.submit_many(
            TaskSpec("echo", f"l{i}", Priority.LOW) for i in range(10)
        ):
            pass
        async for _ in fleet.client.submit_many(
            TaskSpec("echo", f"h{i}", Priority.HIGH) for i in range(10)
        ):
            pass
        async with fleet.agent("solo", concurrency=1):
            await eventually(lambda: _count(fleet, 61), 30, "61 results")
        order = [r["output"] for r in await fleet.results()]
        assert all(o.startswith("h") for o in order[:10]), order[:12]
        assert all(o.startswith("l") for o in order[-10:]), order[-12:]

    with_fleet(fleet_url, body)


def test_a_dead_consumers_tasks_are_reclaimed_and_completed_once(fleet_url: str) -> None:
    async def body(fleet: Fleet) -> None:
        specs = [await fleet.client.submit(TaskSpec("echo", i)) for i in range(5)]
        stream = fleet.client.keys.tasks(Priority.NORMAL)
        await fleet.redis.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
        # A consumer takes the tasks and dies without acknowledging them.
        taken = await fleet.redis.xreadgroup(CONSUMER_GROUP, "dead-agent:1", {stream: ">"}, count=5)
        assert len(taken[0][1]) == 5
        fast = TaskPolicy(claim_idle_seconds=0.3, lease_renew_seconds=0.1)
        async with fleet.agent("rescuer", tasks=fast):
            await eventually(lambda: _count(fleet, 5), 20, "reclaimed tasks completed")
        results = await fleet.results()
        assert sorted(r["task_id"] for r in results) == sorted(s.task_id for s in specs)
        assert {r["agent_id"] for r in results} == {"rescuer"}
        pending = await fleet.redis.xpending(stream, CONSUMER_GROUP)
        assert pending["pending"] == 0

    with_fleet(fleet_url, body)


def test_task_ids_are_idempotent_and_signed_replays_refused(fleet_url: str) -> None:
    async def body(fleet: Fleet) -> None:
        signed = TaskClient(fleet.redis, fleet.namespace, fleet.name, signing_key=KEY.encode())
        first = await signed.submit(TaskSpec("echo", 1, task_id="same-id"))
        again = await signed.submit(TaskSpec("echo", 2, task_id="same-id"))
        assert (first.created, again.created, again.entry_id) == (True, False, first.entry_id)
        # Someone captures the signed message (a finished entry is deleted from the stream)...
        stream = fleet.client.keys.tasks(Priority.NORMAL)
        [(_, fields)] = cast(StreamEntries, await fleet.redis.xrange(stream, count=1))
        async with fleet.agent("a", signing_key=KEY, require_signatures=True):
            assert (await fleet.client.wait("same-id", 10)).output == 1
            # ... and re-adds it under a new stream entry.
            await fleet.redis.xadd(
                stream, {"task_id": fields["task_id"], "envelope": fields["envelope"]}
            )
            await eventually(lambda: _dead(fleet, 1), 10, "the replay dead-lettered")
        assert [d["reason"] for d in await fleet.dead_letters()] == ["replayed"]
        assert len(await fleet.results()) == 1
        assert int(await fleet.redis.xlen(stream)) == 0, "both entries left the stream"

    with_fleet(fleet_url, body)
