"""`reduce`: fold the outputs a workflow task needs into one (a fan-in step).

Input: `{"op": "sum" | "count" | "min" | "max" | "concat" | "merge", "field": "...",
"needs": {task: output}}` (a workflow task's `needs` arrive this way; `field`, optional, takes
that field of each output). `sum`, `min` and `max` take numbers, `concat`
lists or strings, `merge` objects; the needs are folded in task-id order, so the result does
not depend on which finished first.
"""

from __future__ import annotations

from typing import Any

from newfuse_agent.handlers import HandlerError, TaskContext, handler


def _fold(op: str, values: list[Any]) -> Any:
    if op == "count":
        return len(values)
    if op in ("sum", "min", "max"):
        if not all(isinstance(v, int | float) and not isinstance(v, bool) for v in values):
            raise HandlerError(f"{op} needs numbers", retryable=False)
        if not values:
            return 0
        return sum(values) if op == "sum" else min(values) if op == "min" else max(values)
    if op == "concat":
        if all(isinstance(v, str) for v in values):
            return "".join(values)
        if all(isinstance(v, list) for v in values):
            return [item for v in values for item in v]
        raise HandlerError("concat needs strings or lists", retryable=False)
    if op == "merge" and all(isinstance(v, dict) for v in values):
        return {k: v for value in values for k, v in value.items()}
    raise HandlerError(f"unknown op {op!r} (or wrong values for it)", retryable=False)


@handler("reduce")
async def reduce(payload: Any, context: TaskContext) -> Any:
    """Fold ``needs`` with ``op``."""
    if not isinstance(payload, dict) or not isinstance(payload.get("needs"), dict):
        raise HandlerError('input must be {"op": "...", "needs": {...}}', retryable=False)
    needs, field = payload["needs"], payload.get("field")
    values = [needs[k] for k in sorted(needs)]
    if field is not None:
        if not all(isinstance(v, dict) and field in v for v in values):
            raise HandlerError(f"every output needs the field {field!r}", retryable=False)
        values = [v[field] for v in values]
    return _fold(str(payload.get("op", "sum")), values)
