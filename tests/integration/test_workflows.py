"""Workflows and sagas against the real Redis, coordinated by the built-in handlers.

Fleets share the namespace `rt`; agents run in this process (tests/runtime_fleet.py) with the
built-in handlers plus a few test ones. The e2e suite kills agents and the operator mid-flow.
"""

from __future__ import annotations

import asyncio
from typing import Any

from newfuse.adapters.taskclient import TaskSpec
from newfuse_agent.handlers import HandlerError, TaskContext, load_builtin_handlers
from runtime_fleet import Fleet, agents, with_fleets

BUILTIN = load_builtin_handlers()


def fifty_tasks(a: str, b: str, c: str) -> dict[str, Any]:
    """48 leaves on two fleets, a reduce on a third, and a report after it: 50 tasks."""
    leaves = [
        {"id": f"leaf-{i}", "fleet": a if i % 2 else b, "handler": "echo", "input": i}
        for i in range(48)
    ]
    total = {"id": "total", "fleet": c, "handler": "reduce", "input": {"op": "sum"},
             "needs": [leaf["id"] for leaf in leaves]}  # fmt: skip
    report = {"id": "report", "fleet": c, "handler": "echo", "input": "done", "needs": ["total"]}
    return {"tasks": [*leaves, total, report], "result": "total"}


def test_a_50_task_dag_across_three_fleets_reduces_to_the_right_sum(fleet_url: str) -> None:
    async def body(fleets: list[Fleet]) -> None:
        a, b, c = fleets
        flow = fifty_tasks(a.name, b.name, c.name)
        async with agents(*((f, BUILTIN) for f in fleets), concurrency=4):
            await a.client.submit(TaskSpec("workflow", flow, task_id="wf-1"))
            result = await a.client.wait("wf-1", 60)
        assert result.status.value == "succeeded", result.error
        assert result.output == {"tasks": 50, "failed": [], "output": sum(range(48))}
        for fleet in fleets:
            counters = await fleet.redis.hgetall(fleet.client.keys.counters)
            assert int(counters.get("duplicates", 0)) == 0
        # Three levels (leaves, total, report): the coordinator waited three times.
        assert int(await a.redis.hget(a.client.keys.counters, "delegations") or 0) == 3

    with_fleets(fleet_url, 3, body)


def test_any_and_quorum_start_a_task_before_all_its_needs_succeeded(fleet_url: str) -> None:
    async def flaky(payload: Any, context: TaskContext) -> Any:
        if payload == "bad":
            raise HandlerError("no", retryable=False)
        return payload

    async def body(fleets: list[Fleet]) -> None:
        [a] = fleets
        flow = {
            "tasks": [
                {"id": "x", "fleet": a.name, "handler": "flaky", "input": "x"},
                {"id": "y", "fleet": a.name, "handler": "flaky", "input": "bad"},
                {"id": "z", "fleet": a.name, "handler": "flaky", "input": "z"},
                {"id": "two", "fleet": a.name, "handler": "reduce", "input": {"op": "count"},
                 "needs": ["x", "y", "z"], "aggregate": "quorum", "quorum": 2},
                {"id": "one", "fleet": a.name, "handler": "reduce", "input": {"op": "concat"},
                 "needs": ["x", "y"], "aggregate": "any"},
                {"id": "all", "fleet": a.name, "handler": "echo", "needs": ["x", "y"]},
            ]
        }  # fmt: skip
        async with agents((a, {**BUILTIN, "flaky": flaky}), concurrency=4):
            await a.client.submit(TaskSpec("workflow", flow, task_id="wf-2"))
            result = await a.client.wait("wf-2", 60)
        assert result.status.value == "failed"
        assert "cannot run: all" in (result.error or ""), result.error
        assert (await a.client.result("wf-2.two")).output == 2
        assert (await a.client.result("wf-2.one")).output == "x"

    with_fleets(fleet_url, 1, body)


def test_a_cyclic_workflow_is_refused_naming_the_cycle(fleet_url: str) -> None:
    async def body(fleets: list[Fleet]) -> None:
        [a] = fleets
        flow = {
            "tasks": [
                {"id": "p", "fleet": a.name, "handler": "echo", "needs": ["q"]},
                {"id": "q", "fleet": a.name, "handler": "echo", "needs": ["p"]},
            ]
        }
        async with agents(*((f, BUILTIN) for f in fleets), concurrency=4):
            await a.client.submit(TaskSpec("workflow", flow, task_id="wf-3"))
            result = await a.client.wait("wf-3", 30)
        assert "a cycle: " in (result.error or "")
        assert "p -> q -> p" in (result.error or "") or "q -> p -> q" in (result.error or "")

    with_fleets(fleet_url, 1, body)


def saga_spec(fleet: str, fail_at: int | None) -> dict[str, Any]:
    return {
        "operations": [
            {"id": f"op{i}", "fleet": fleet, "handler": "step",
             "input": "fail" if i == fail_at else i, "compensate": {"handler": "undo"}}
            for i in range(1, 5)
        ]
    }  # fmt: skip


def test_a_saga_compensates_in_reverse_once_each_or_commits(fleet_url: str) -> None:
    runs: list[str] = []

    async def step(payload: Any, context: TaskContext) -> Any:
        runs.append(f"step {payload}")
        if payload == "fail":
            raise HandlerError("refused by the bank", retryable=False)
        return {"booked": payload}

    async def undo(payload: Any, context: TaskContext) -> Any:
        runs.append(f"undo {payload['input']}")
        await asyncio.sleep(0.05)
        return {"cancelled": payload["output"]}

    async def body(fleets: list[Fleet]) -> None:
        [a] = fleets
        async with agents((a, {**BUILTIN, "step": step, "undo": undo}), concurrency=4):
            await a.client.submit(TaskSpec("saga", saga_spec(a.name, 3), task_id="tx-1"))
            rolled = await a.client.wait("tx-1", 60)
            await a.client.submit(TaskSpec("saga", saga_spec(a.name, None), task_id="tx-2"))
            committed = await a.client.wait("tx-2", 60)
        assert rolled.output is not None
        assert committed.output is not None
        assert rolled.output["status"] == "rolled_back"
        states = [op["state"] for op in rolled.output["operations"]]
        assert states == ["compensated", "compensated", "failed", "pending"]
        assert runs[:5] == ["step 1", "step 2", "step fail", "undo 2", "undo 1"]
        assert committed.output["status"] == "committed", (committed.output, runs)
        assert runs[5:] == ["step 1", "step 2", "step 3", "step 4"]

    with_fleets(fleet_url, 1, body)
