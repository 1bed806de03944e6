"""Protocol majors against the real Redis: routing by what agents speak, and the sightings.

A canary agent that speaks only 2.x shares the consumer group with a stable agent that speaks
1.x and 2.x. Every 1.x task it takes goes on, unchanged and still signed, to the stable agent;
none is dead-lettered. With no 1.x speaker left, a 1.x task fails at once, naming the major.
Submissions and agents stamp the majors they see, which is what the operator's gate reads.
"""

from __future__ import annotations

import datetime as dt
import uuid
from typing import Any

from newfuse.adapters.redis_store import RedisStore
from newfuse.adapters.taskclient import TaskClient, TaskSpec
from newfuse.wire.envelope import MessageType, encode
from newfuse.wire.signing import Channel
from newfuse.wire.tasks import ResultStatus, TaskPayload
from newfuse_agent import metrics
from newfuse_agent.metrics import TaskOutcome
from runtime_fleet import Fleet, eventually, with_fleet

KEY = "k" * 40
KEY_BYTES = KEY.encode()


def _passed_on() -> float:
    return float(metrics.TASKS.labels(TaskOutcome.PASSED_ON)._value.get())


def test_a_2x_only_canary_passes_signed_1x_tasks_to_a_1x_speaker(fleet_url: str) -> None:
    async def body(fleet: Fleet) -> None:
        signed = TaskClient.from_url(fleet_url, fleet.namespace, fleet.name, signing_key=KEY_BYTES)
        keyed: dict[str, Any] = {"signing_key": KEY, "require_signatures": True}
        before = _passed_on()
        async with (
            fleet.agent("canary-1", revision="new", speaks=frozenset({2}), **keyed),
            fleet.agent("stable-1", revision="old", **keyed),
        ):
            one = [TaskSpec("echo", f"one {i}", protocol_version="1.0") for i in range(40)]
            two = [TaskSpec("echo", f"two {i}", protocol_version="2.0") for i in range(40)]
            submitted = [await signed.submit(spec) for spec in one + two]
            results = [await signed.wait(s.task_id, 30) for s in submitted]
        assert all(r.status is ResultStatus.SUCCEEDED for r in results), results
        assert [r.output for r in results] == [s.input for s in one + two]
        assert {r.agent_id for r in results[:40]} == {"stable-1"}, "1.x only on its speaker"
        assert "canary-1" in {r.agent_id for r in results[40:]}, "the canary took 2.x work"
        assert _passed_on() > before, "the canary did take 1.x tasks, and passed them on"
        assert await fleet.dead_letters() == []
        seen = await RedisStore(fleet_url).protocol_seen(fleet.client.keys)
        assert set(seen) == {1, 2}
        assert all(age < 30 for age in seen.values())
        await signed.aclose()

    with_fleet(fleet_url, body)


def test_a_task_no_live_agent_speaks_fails_at_once_naming_its_major(fleet_url: str) -> None:
    async def body(fleet: Fleet) -> None:
        async with fleet.agent("canary-1", revision="new", speaks=frozenset({2})):
            orphan = await fleet.client.submit(TaskSpec("echo", "x", protocol_version="1.4"))
            fine = await fleet.client.submit(TaskSpec("echo", "y", protocol_version="2.0"))
            failed = await fleet.client.wait(orphan.task_id, 10)
            assert (await fleet.client.wait(fine.task_id, 10)).output == "y"
        assert failed.status is ResultStatus.FAILED
        assert failed.error is not None
        assert "protocol 1.x: no live agent of this fleet speaks it" in failed.error
        assert "this agent speaks 2.x" in failed.error
        [letter] = await fleet.dead_letters()
        assert letter["reason"] == "unsupported_version"

    with_fleet(fleet_url, body)


def test_a_foreign_producers_major_is_seen_when_an_agent_takes_it(fleet_url: str) -> None:
    """A task XADDed by hand skips the submission script; the agent's own stamp still sees it."""

    async def body(fleet: Fleet) -> None:
        keys, store = fleet.client.keys, RedisStore(fleet_url)
        task = TaskPayload(task_id=uuid.uuid4().hex, handler="echo", input="by hand")
        raw = encode(
            MessageType.TASK,
            task.model_dump(mode="json"),
            "foreign",
            now=dt.datetime.now(dt.UTC),
            audience=keys.audience(Channel.TASKS),
            protocol_version="2.1",
        )
        await fleet.redis.xadd(keys.tasks("normal"), {"task_id": task.task_id, "envelope": raw})
        assert await store.protocol_seen(keys) == {}
        async with fleet.agent("agent-1"):
            assert (await fleet.client.wait(task.task_id, 10)).output == "by hand"

            async def stamped() -> bool:
                return set(await store.protocol_seen(keys)) == {2}

            await eventually(stamped, 10, "the agent's heartbeat stamps 2.x")
        await store.close()

    with_fleet(fleet_url, body)
