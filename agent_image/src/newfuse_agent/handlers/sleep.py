"""`sleep`: waits `seconds` (at most 300), then returns its input.

Work of a known duration, for exercising drains, reclaims and concurrency in tests and demos.
"""

from __future__ import annotations

import asyncio
from typing import Any

from newfuse_agent.handlers import HandlerError, TaskContext, handler

MAX_SECONDS = 300.0


@handler("sleep")
async def sleep(task_input: Any, context: TaskContext) -> Any:
    """Sleep for ``task_input["seconds"]`` (default 1) and echo the input."""
    seconds = task_input.get("seconds", 1.0) if isinstance(task_input, dict) else 1.0
    if not isinstance(seconds, int | float) or not 0 <= seconds <= MAX_SECONDS:
        raise HandlerError(f"seconds must be a number from 0 to {MAX_SECONDS:g}", retryable=False)
    await asyncio.sleep(seconds)
    return task_input
