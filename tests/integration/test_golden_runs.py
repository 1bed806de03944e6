"""Golden runs against the real Redis: the operator publishes, agents of each revision run, once.

Agents run in this process (tests/runtime_fleet.py); the operator's side is its RedisStore. The
e2e suite (tests/e2e/test_golden_gate.py) runs the whole gate on the operator's fleets.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from factories import analyzing
from newfuse.adapters.redis_store import RedisStore
from newfuse.api.rollout import RolloutState
from newfuse.core.golden import golden_run, parse_cases, score
from newfuse.wire import golden
from newfuse.wire.golden import GoldenOutput
from newfuse.wire.taskpolicy import TaskPolicy
from newfuse_agent.golden import GoldenRunner
from newfuse_agent.handlers import Handler, TaskContext
from newfuse_agent.handlers.echo import _upper, echo
from runtime_fleet import Fleet, eventually, with_fleet

CASES = parse_cases(
    "\n".join(
        f"- {{name: c{i}, handler: echo, input: {{text: case {i}}}, "
        f"expect: {{exact: {{text: case {i}}}}}}}"
        for i in range(6)
    )
    + "\n- {name: broken, handler: missing, expect: {contains: x}}",
    "test",
)


async def shouting(task_input: Any, context: TaskContext) -> Any:
    return _upper(task_input)


def rollout(at: dt.datetime | None = None) -> RolloutState:
    return analyzing(at)


async def _outputs(store: RedisStore, fleet: Fleet) -> dict[str, GoldenOutput]:
    return (await store.golden_outputs(fleet.client.keys))[1]


async def _all_recorded(store: RedisStore, fleet: Fleet, n: int) -> bool:
    return len(await _outputs(store, fleet)) >= n


def test_each_revision_runs_every_case_once_and_the_canary_is_scored_apart(
    fleet_url: str,
) -> None:
    async def body(fleet: Fleet) -> None:
        store = RedisStore(fleet.url)
        keys = fleet.client.keys
        run = golden_run(rollout(), CASES)
        await store.publish_golden(keys, run)
        canary: dict[str, Handler] = {"echo": shouting}
        async with (
            fleet.agent("c1", handlers=canary, revision="new"),
            fleet.agent("c2", handlers=canary, revision="new"),
            fleet.agent("s1", revision="old"),
            fleet.agent("x1", revision="unrelated"),
        ):
            await eventually(
                lambda: _all_recorded(store, fleet, 2 * len(CASES)), 20, "every case run"
            )
        current, outputs = await store.golden_outputs(keys)
        assert current == run.id
        assert len(outputs) == 2 * len(CASES), "the unrelated revision ran nothing"
        assert {o.agent for f, o in outputs.items() if f.startswith("new/")} <= {"c1", "c2"}
        new, old = score(CASES, outputs, "new"), score(CASES, outputs, "old")
        assert (new.passed, new.failed) == (0, 7)
        assert (old.passed, old.failed, old.wrong) == (6, 1, ("broken",))
        assert outputs["old/broken"].error == "no handler 'missing'"
        claims = await fleet.redis.hlen(keys.golden_claims)
        assert claims == 2 * len(CASES), "each case claimed once per revision"
        # Publishing the same run again keeps its outputs; the next step's run starts afresh.
        await store.publish_golden(keys, run)
        assert len(await _outputs(store, fleet)) == 2 * len(CASES)
        later = golden_run(rollout(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=5)), CASES)
        await store.publish_golden(keys, later)
        assert await store.golden_outputs(keys) == (later.id, {})
        assert await fleet.redis.hlen(keys.golden_claims) == 0
        await store.close()

    with_fleet(fleet_url, body)


def test_a_case_claimed_by_a_dead_agent_is_run_once_its_claim_is_stale(fleet_url: str) -> None:
    async def body(fleet: Fleet) -> None:
        store = RedisStore(fleet.url)
        keys = fleet.client.keys
        run = golden_run(rollout(), CASES[:2])
        await store.publish_golden(keys, run)
        claim = fleet.redis.register_script(golden.CLAIM_LUA)
        stale_ms = 60_000
        taken = await claim(keys=[keys.golden, keys.golden_outputs, keys.golden_claims],
                            args=["new", "dead-agent", stale_ms])  # fmt: skip
        assert taken[:2] == [run.id, 0]
        started = time.monotonic()
        policy = TaskPolicy(
            default_timeout_seconds=1.5, claim_idle_seconds=0.5, lease_renew_seconds=0.2
        )
        async with fleet.agent("c1", revision="new", tasks=policy):
            await eventually(lambda: _all_recorded(store, fleet, 2), 20, "both cases run")
        waited = time.monotonic() - started
        outputs = await _outputs(store, fleet)
        assert outputs["new/c0"].agent == "c1"
        assert outputs["new/c0"].ok
        # The stale bound is the task timeout plus the claim bound (1.5 + 0.7 s here).
        assert waited >= 2.2, f"the dead agent's claim was taken after {waited:.1f}s"
        await store.close()

    with_fleet(fleet_url, body)


def test_an_output_of_a_replaced_run_is_never_recorded(fleet_url: str) -> None:
    async def body(fleet: Fleet) -> None:
        store = RedisStore(fleet.url)
        keys = fleet.client.keys
        first = golden_run(rollout(), CASES[:1])
        await store.publish_golden(keys, first)
        await store.publish_golden(
            keys, golden_run(rollout(dt.datetime.now(dt.UTC) + dt.timedelta(seconds=9)), CASES)
        )
        record = fleet.redis.register_script(golden.RECORD_LUA)
        late = GoldenOutput(ok=True, output="late").model_dump_json()
        kept = await record(
            keys=[keys.golden, keys.golden_outputs], args=[first.id, "new/c0", late]
        )
        assert kept == 0
        assert await _outputs(store, fleet) == {}
        await store.close()

    with_fleet(fleet_url, body)


def test_the_stale_bound_follows_the_fleets_task_timeout_by_default() -> None:
    policy = TaskPolicy()
    config = Fleet("redis://unused").config("a", tasks=policy)
    context = TaskContext("a", "f", "ns", "r", ())
    runner = GoldenRunner(config, _NoRedis(), {"echo": echo}, context)  # type: ignore[arg-type]
    expected = (policy.default_timeout_seconds + policy.claim_bound_seconds) * 1000
    assert runner.stale_ms == round(expected)
    assert runner.timeout == policy.default_timeout_seconds


class _NoRedis:
    def register_script(self, script: str) -> None:
        return None
