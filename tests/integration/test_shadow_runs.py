"""Shadow tasks against the real Redis: live tasks copied to the canary, its answers kept apart.

A stable agent answers live tasks and offers the sampled ones; a canary agent (which upper-cases:
a wrong answer without an error) answers the copies. Every caller's result is the stable one; the
copies' answers are only in the shadow hash, where the operator scores them.
"""

from __future__ import annotations

from typing import Any

from factories import analyzing
from newfuse.adapters.redis_store import RedisStore
from newfuse.adapters.taskclient import TaskSpec
from newfuse.api.analysis import ShadowSpec
from newfuse.core.shadow import score, shadow_config
from newfuse_agent.handlers import Handler, TaskContext
from newfuse_agent.handlers.echo import _upper
from runtime_fleet import Fleet, eventually, with_fleet


async def shouting(task_input: Any, context: TaskContext) -> Any:
    return _upper(task_input)


def test_callers_get_stable_answers_and_the_canary_answers_copies_apart(fleet_url: str) -> None:
    async def body(fleet: Fleet) -> None:
        operator = RedisStore(fleet.url)
        keys = fleet.client.keys
        state = analyzing()
        config = shadow_config(state, ShadowSpec(percent=50, max_samples=12))
        await operator.publish_shadow(keys, config)
        async with fleet.agent("stable-1", revision="old"):
            submitted = [
                await fleet.client.submit(TaskSpec("echo", f"word {i}")) for i in range(60)
            ]
            results = [await fleet.client.wait(s.task_id, 20) for s in submitted]
        _, cases, _ = await operator.shadow_outputs(keys)
        sampled = {s.task_id for s in submitted if config.sampled(s.task_id)}
        assert len(cases) == min(12, len(sampled)), "the sample, capped at maxSamples"
        assert set(cases) <= sampled
        canary: dict[str, Handler] = {"echo": shouting}
        async with fleet.agent("canary-1", handlers=canary, revision="new"):

            async def answered() -> bool:
                return len((await operator.shadow_outputs(keys))[2]) == len(cases)

            await eventually(answered, 20, "every copy answered by the canary")
        current, cases, outputs = await operator.shadow_outputs(keys)
        assert current == config.id
        assert {o.agent for o in outputs.values()} == {"canary-1"}
        assert all(o.output == cases[t].output.upper() for t, o in outputs.items())
        seen = score(cases, outputs)
        assert (seen.samples, seen.agreed) == (len(cases), 0)
        # Every caller's answer is the stable one, the shadowed tasks' included.
        by_id = {r.task_id: r for r in results}
        for task_id in cases:
            assert by_id[task_id].agent_id == "stable-1"
            assert by_id[task_id].output == cases[task_id].output
        assert all(r.output == f"word {i}" for i, r in enumerate(results))
        stored = [await fleet.client.result(t) for t in cases]
        assert all(r is not None and r.output.islower() for r in stored), "copies never stored"
        await operator.close()

    with_fleet(fleet_url, body)
