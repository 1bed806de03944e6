"""The llmJudge scorer against the real Redis: stable agents grade, through their own gateway.

The canary upper-cases its answers and has a lenient model of its own (its gateway says PASS to
anything); the stable revision's model grades by the criteria. Every grading is done by the stable
agent, the canary's gateway is never asked, and the canary's answers are graded wrong. A reply
that is not a grade is asked again.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from factories import analyzing
from gateway_stub import Reply, Stub, stub_gateway
from newfuse.adapters.redis_store import RedisStore
from newfuse.adapters.taskclient import TaskSpec
from newfuse.api.analysis import ShadowSpec
from newfuse.core.golden import golden_run, parse_cases, score
from newfuse.core.shadow import score as shadow_score
from newfuse.core.shadow import shadow_config
from newfuse.wire.golden import judge_field
from newfuse_agent.gateway import GatewayClient
from newfuse_agent.gateway_config import GatewayConfig
from newfuse_agent.handlers import Handler, TaskContext
from newfuse_agent.handlers.echo import _upper
from runtime_fleet import Fleet, eventually, with_fleet

CASES = parse_cases(
    """
- {name: greet, handler: echo, input: "hello there", expect: {llmJudge: "All lower case."}}
- {name: thanks, handler: echo, input: "thank you", expect: {llmJudge: "All lower case."}}
- {name: word, handler: echo, input: "word", expect: {exact: "word"}}
""",
    "test",
)


async def shouting(task_input: Any, context: TaskContext) -> Any:
    return _upper(task_input)


def strict(calls: list[str]) -> Any:
    """A grader by the criteria "all lower case"; its first reply is not a grade."""

    def grade(messages: list[dict[str, str]]) -> str:
        answer = messages[-1]["content"].rsplit("Answer (JSON):\n", 1)[1]
        calls.append(answer)
        if len(calls) == 1:
            return "I would rather not say."  # not a grade: asked again
        return "PASS: lower case." if answer == answer.lower() else "FAIL - it shouts."

    return grade


CANARY: dict[str, Handler] = {"echo": shouting}


@contextlib.asynccontextmanager
async def models() -> AsyncIterator[tuple[Stub, Stub, GatewayClient, GatewayClient]]:
    """Stable's model grades strictly (its first reply is not a grade); the canary's says PASS."""
    async with stub_gateway(Reply.OK) as graders, stub_gateway(Reply.OK) as lenient:
        graders.content = strict([])
        lenient.content = lambda _: "PASS"
        stable_model = GatewayClient(GatewayConfig(endpoint=graders.url))
        canary_model = GatewayClient(GatewayConfig(endpoint=lenient.url))
        try:
            yield graders, lenient, stable_model, canary_model
        finally:
            await stable_model.aclose()
            await canary_model.aclose()


def test_stable_agents_grade_llm_judge_cases_and_the_canary_never_grades_itself(
    fleet_url: str,
) -> None:
    async def body(fleet: Fleet) -> None:
        store, keys = RedisStore(fleet.url), fleet.client.keys
        state = analyzing()
        run = golden_run(state, CASES)
        assert run.judge == "old"
        await store.publish_golden(keys, run)
        async with models() as (graders, lenient, stable_model, canary_model):
            async with (
                fleet.agent("c1", handlers=CANARY, gateway=canary_model, revision="new"),
                fleet.agent("s1", gateway=stable_model, revision="old"),
            ):

                async def graded() -> bool:
                    outputs = (await store.golden_outputs(keys))[1]
                    return len(outputs) == 2 * 3 + 2 * 2

                await eventually(graded, 30, "every answer run and every llmJudge one graded")
            assert lenient.requests == 0, "the canary's model never graded"
            assert graders.requests == 5, "four gradings, one asked again"
        outputs = (await store.golden_outputs(keys))[1]
        judgments = {f: o for f, o in outputs.items() if f.startswith("judge:")}
        assert set(judgments) == {
            judge_field(f"{rev}/{case}") for rev in ("new", "old") for case in ("greet", "thanks")
        }
        assert all(o.agent.startswith("s1:") for o in judgments.values())
        assert not judgments["judge:new/greet"].ok
        assert "shouts" in str(judgments["judge:new/greet"].output)
        new, old = score(CASES, outputs, "new"), score(CASES, outputs, "old")
        assert (new.passed, new.failed, set(new.wrong)) == (0, 3, {"greet", "thanks", "word"})
        assert (old.passed, old.failed) == (3, 0)
        # Gradings spend: today's total counts them (budgets see it), the cost gate's revisions not.
        usage = await store.usage(keys)
        assert usage.tokens_today == 5 * 5, "five calls of the stub's 5 tokens"
        assert usage.by_revision["gates:old"][0] == 25
        assert "old" not in usage.by_revision
        await store.close()

    with_fleet(fleet_url, body)


def test_shadow_agreement_is_graded_by_the_stable_model_when_the_gate_names_criteria(
    fleet_url: str,
) -> None:
    async def body(fleet: Fleet) -> None:
        store, keys = RedisStore(fleet.url), fleet.client.keys
        spec = ShadowSpec(percent=100, max_samples=6, judge="Says the same as the reference.")
        config = shadow_config(analyzing(), spec)
        assert config.judge == "Says the same as the reference."
        await store.publish_shadow(keys, config)
        async with (
            models() as (graders, lenient, stable_model, canary_model),
            fleet.agent("s1", gateway=stable_model, revision="old"),
        ):
            tasks = [await fleet.client.submit(TaskSpec("echo", f"w {i}")) for i in range(6)]
            results = [await fleet.client.wait(t.task_id, 20) for t in tasks]
            async with fleet.agent("c1", handlers=CANARY, gateway=canary_model, revision="new"):

                async def graded() -> bool:
                    _, _, outputs = await store.shadow_outputs(keys)
                    return sum(f.startswith("judge:") for f in outputs) == 6

                await eventually(graded, 30, "every copy answered and graded")
        assert lenient.requests == 0, "the canary's model never graded its own copies"
        assert [r.output for r in results] == [f"w {i}" for i in range(6)], "callers: stable"
        _, cases, outputs = await store.shadow_outputs(keys)
        seen = shadow_score(cases, outputs, judged=True)
        assert (seen.samples, seen.agreed) == (6, 0)
        assert all(o.agent.startswith("s1:") for f, o in outputs.items() if f.startswith("judge:"))
        assert "Reference answer (JSON):" in graders.bodies[-1]["messages"][-1]["content"]
        await store.close()

    with_fleet(fleet_url, body)
