"""`echo`: returns its input. Deterministic, for tests and benchmarks.

NEWFUSE_ECHO_CASE=upper makes it answer wrongly without failing: every string in its output is
upper-cased. That is the release going bad that only a quality gate sees (golden tasks).
"""

from __future__ import annotations

import os
from typing import Any

from newfuse.wire.agentenv import AgentEnv
from newfuse_agent.handlers import TaskContext, handler


@handler("echo")
async def echo(task_input: Any, context: TaskContext) -> Any:
    """Return the input unchanged (or upper-cased, see the module docstring)."""
    if os.environ.get(AgentEnv.ECHO_CASE) == "upper":
        return _upper(task_input)
    return task_input


def _upper(value: Any) -> Any:
    if isinstance(value, str):
        return value.upper()
    if isinstance(value, list):
        return [_upper(v) for v in value]
    if isinstance(value, dict):
        return {k: _upper(v) for k, v in value.items()}
    return value
