"""`delegate`: run a handler on another fleet of this namespace and return its output.

Input: `{"fleet": "...", "handler": "...", "input": ..., "taskId": "..."}` (`taskId` optional: it
makes the delegated task idempotent). The task waits without holding an agent slot until the
other task has ended; its failure fails this task, naming it. Chains of these make pipelines
across fleets; a chain that comes back to a task waiting in it is a deadlock, which the agents
break (see newfuse.wire.delegation).
"""

from __future__ import annotations

from typing import Any

from newfuse_agent.handlers import HandlerError, TaskContext, handler


@handler("delegate")
async def delegate(payload: Any, context: TaskContext) -> Any:
    """Delegate, and return the other task's output."""
    if not isinstance(payload, dict) or not all(
        isinstance(payload.get(k), str) and payload[k] for k in ("fleet", "handler")
    ):
        raise HandlerError(
            'input must be {"fleet": "...", "handler": "...", "input": ..., "taskId": "..."}',
            retryable=False,
        )
    task_id = payload.get("taskId")
    if task_id is not None and not isinstance(task_id, str):
        raise HandlerError("taskId must be a string", retryable=False)
    return await context.delegate(
        payload["fleet"], payload["handler"], payload.get("input"), task_id=task_id
    )
