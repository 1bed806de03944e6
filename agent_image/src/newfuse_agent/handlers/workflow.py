"""`workflow`: run a DAG of tasks across fleets, level by level, and return their outputs.

Input: a workflow (newfuse.core.workflow.Workflow: `tasks` with `id`, `fleet`, `handler`,
`input`, `needs`, `aggregate`, `quorum`; optional `result`). The task's id names the workflow:
its tasks run as `<id>.<task id>`. Each run of this handler replays the levels already done
(their outcomes are the task's own) and delegates the next; it holds no slot while a level runs.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from newfuse.core import workflow as dag
from newfuse_agent.contract import Call
from newfuse_agent.handlers import HandlerError, TaskContext, handler


@handler("workflow")
async def workflow(payload: Any, context: TaskContext) -> Any:
    """Run the workflow; fail naming the tasks that failed if it cannot finish."""
    try:
        spec = dag.Workflow.model_validate(payload)
    except (ValidationError, dag.WorkflowError) as exc:
        raise HandlerError(f"invalid workflow: {exc}", retryable=False) from None
    ended: dict[str, dag.Ended] = {}
    while len(ended) < len(spec.tasks):
        level = dag.ready(spec, ended)
        if not level:
            raise HandlerError(dag.stuck(spec, ended) or "no task can run", retryable=False)
        calls = [
            Call(t.fleet, t.handler, dag.task_input(t, ended), dag.child_id(context.task_id, t))
            for t in level
        ]
        for task, outcome in zip(level, await context.delegate_all(calls), strict=True):
            assert outcome is not None  # a level waits for all of its tasks
            ended[task.id] = dag.Ended(
                succeeded=outcome.succeeded, output=outcome.output, error=outcome.error
            )
    failed = sorted(i for i, e in ended.items() if not e.succeeded)
    if spec.result is not None and spec.result in failed:
        raise HandlerError(f"the result task {spec.result} failed: {ended[spec.result].error}",
                           retryable=False)  # fmt: skip
    return {"tasks": len(ended), "failed": failed, "output": dag.output(spec, ended)}
