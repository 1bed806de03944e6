"""`ask`: put a question to a person and return their answer (human input as a task).

Input: `{"question": "...", "schema": {...}}` (the schema, a JSON Schema of the answer, is
optional). The task waits in `input-required`, holding no agent slot, until somebody answers
(`newfuse review answer`) or rejects it; then the handler runs again and returns the answer.
"""

from __future__ import annotations

from typing import Any

from newfuse_agent.handlers import HandlerError, TaskContext, handler


@handler("ask")
async def ask(payload: Any, context: TaskContext) -> Any:
    """Ask, and return `{"question", "answer"}`."""
    if not isinstance(payload, dict) or not isinstance(payload.get("question"), str):
        raise HandlerError('input must be {"question": "...", "schema": {...}}', retryable=False)
    schema = payload.get("schema")
    if schema is not None and not isinstance(schema, dict):
        raise HandlerError("schema must be a JSON Schema object", retryable=False)
    answer = await context.request_input(payload["question"], schema)
    return {"question": payload["question"], "answer": answer}
