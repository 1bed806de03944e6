"""`echo`: returns its input. Deterministic, for tests and benchmarks."""

from __future__ import annotations

from typing import Any

from newfuse_agent.handlers import TaskContext, handler


@handler("echo")
async def echo(task_input: Any, context: TaskContext) -> Any:
    """Return the input unchanged."""
    return task_input
