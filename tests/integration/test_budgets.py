"""Usage and hard budgets against the real Redis: counted by agents, enforced at submission.

An agent in this process (tests/runtime_fleet.py) runs `chat` tasks against the stub gateway,
which reports token usage; the agent prices it and counts it per revision and per day. Once the
operator's mirrored hard limit is reached, every way in (TaskClient, bulk, the fleet API's A2A
store) refuses new tasks with an error naming the limit, and admits them again when it is raised.
"""

from __future__ import annotations

import datetime as dt

import pytest

from gateway_stub import Reply, stub_gateway
from newfuse.adapters.a2astore import A2AStore
from newfuse.adapters.redis_store import RedisStore
from newfuse.adapters.taskclient import TaskSpec
from newfuse.adapters.taskerrors import BudgetExceededError
from newfuse.api.budget import BudgetSpec
from newfuse.wire.usage import Price
from newfuse_agent.gateway import GatewayClient, GatewayConfig
from newfuse_agent.handlers.chat import chat
from runtime_fleet import Fleet, with_fleet

PRICES = (Price(model="stub-model", inputPerMillionTokens=1000, outputPerMillionTokens=4000),)


def test_usage_is_counted_and_a_hard_budget_refuses_new_tasks_until_raised(fleet_url: str) -> None:
    async def body(fleet: Fleet) -> None:
        operator = RedisStore(fleet.url)
        keys = fleet.client.keys
        async with stub_gateway(Reply.OK) as stub:
            stub.usage = {"prompt_tokens": 300, "completion_tokens": 100, "total_tokens": 400}
            gateway = GatewayClient(
                GatewayConfig(endpoint=stub.url, prices=PRICES), redis=fleet.redis, keys=keys
            )
            async with fleet.agent("a1", handlers={"chat": chat}, gateway=gateway, revision="r9"):
                done = [await fleet.client.submit(TaskSpec("chat", f"q{i}")) for i in range(5)]
                for task in done:
                    assert (await fleet.client.wait(task.task_id, 20)).status.value == "succeeded"
            await gateway.aclose()
        usage = await operator.usage(keys)
        tokens, cost = usage.by_revision["r9"]
        assert tokens == 2000
        assert cost == pytest.approx(5 * (0.3 + 0.4))
        assert usage.tokens_today == 2000
        assert usage.cost_today == pytest.approx(3.5)
        # Under the limit: admitted. At it: refused, every way in, naming the limit.
        await operator.put_budget(keys, BudgetSpec(hard_tokens=2001))
        await fleet.client.submit(TaskSpec("chat", "still fine"))
        await operator.put_budget(keys, BudgetSpec(hard_tokens=2000, hard_cost=100))
        with pytest.raises(BudgetExceededError, match=r"2,000 tokens of spec.budget.hardTokens"):
            await fleet.client.submit(TaskSpec("chat", "one more"))
        with pytest.raises(BudgetExceededError, match="new tasks are refused until 00:00 UTC"):
            async for _ in fleet.client.submit_many([TaskSpec("chat", i) for i in range(3)]):
                pass
        store = A2AStore(fleet.client)
        with pytest.raises(BudgetExceededError):
            await store.submit(TaskSpec("chat", "a2a"), '{"r": 1}', dt.datetime.now(dt.UTC))
        assert await fleet.redis.xlen(keys.tasks("normal")) <= 1, "nothing refused was queued"
        # A task admitted before is not refused when sent again (idempotent by id).
        again = await fleet.client.submit(TaskSpec("chat", "x", task_id=done[0].task_id))
        assert again.created is False
        # Raised, or removed: admitted again.
        await operator.put_budget(keys, BudgetSpec(hard_tokens=10_000))
        await fleet.client.submit(TaskSpec("chat", "after the raise"))
        await operator.put_budget(keys, None)
        assert await fleet.redis.exists(keys.budget) == 0
        await operator.close()

    with_fleet(fleet_url, body)
