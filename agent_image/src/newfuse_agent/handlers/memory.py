"""`remember`, `recall` and `forget`: the fleet's memory as tasks, for clients and tests.

A handler that needs memory calls `context.memory` itself; these expose the same calls to anyone
who can submit a task, and say which revision answered, which is what makes a canary's quarantine
visible from outside. Input shapes: remember {text, metadata?, id?, ttlSeconds?}, recall
{query, k?, where?}, forget {ids: [...]}.
"""

from __future__ import annotations

from typing import Any

from newfuse_agent.contract import Memory
from newfuse_agent.handlers import HandlerError, TaskContext, handler


def _memory(context: TaskContext) -> Memory:
    if context.memory is None:
        raise HandlerError(
            "this agent has no fleet memory (its image lacks the newfuse[memory] extra)",
            retryable=False,
        )
    return context.memory


def _object(task_input: Any, required: str) -> dict[str, Any]:
    if not isinstance(task_input, dict) or required not in task_input:
        raise HandlerError(f"input must be an object with {required!r}", retryable=False)
    return task_input


@handler("remember")
async def remember(task_input: Any, context: TaskContext) -> dict[str, Any]:
    """Remember ``text``; the memory's id and the revision that wrote it."""
    given = _object(task_input, "text")
    memory_id = await _memory(context).remember(
        str(given["text"]),
        given.get("metadata"),
        memory_id=given.get("id") or context.task_id or None,  # a redelivery writes once
        ttl_seconds=given.get("ttlSeconds"),
    )
    return {"id": memory_id, "revision": context.revision}


@handler("recall")
async def recall(task_input: Any, context: TaskContext) -> dict[str, Any]:
    """The memories nearest ``query``, as the answering revision sees them."""
    given = _object(task_input, "query")
    found = await _memory(context).recall(
        str(given["query"]), int(given.get("k", 5)), given.get("where")
    )
    memories = [
        {"id": m.id, "text": m.text, "score": m.score, "revision": m.revision,
         "metadata": m.metadata}
        for m in found
    ]  # fmt: skip
    return {"revision": context.revision, "memories": memories}


@handler("forget")
async def forget(task_input: Any, context: TaskContext) -> dict[str, Any]:
    """Forget the memories of ``ids``; how many existed."""
    ids = _object(task_input, "ids")["ids"]
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise HandlerError("ids must be a list of strings", retryable=False)
    return {"forgotten": await _memory(context).forget(*ids)}
