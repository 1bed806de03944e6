"""`saga`: a transaction of operations on fleets, committed or undone by compensating tasks.

Input: newfuse.core.saga.Saga (`operations`, each `id`, `fleet`, `handler`, `input` and an
optional `compensate`). The task's id names the transaction. Its output is the Transaction
record: `committed` when every operation succeeded, else `rolled_back` once the compensations of
the operations that succeeded ran, last first (or `rollback_failed`).
"""

from __future__ import annotations

import datetime as dt
from typing import Any

from pydantic import ValidationError

from newfuse.core import saga as tx
from newfuse_agent.contract import Call, Outcome
from newfuse_agent.handlers import HandlerError, TaskContext, handler


async def _one(context: TaskContext, call: Call) -> Outcome:
    [outcome] = await context.delegate_all([call])
    assert outcome is not None
    return outcome


@handler("saga")
async def saga(payload: Any, context: TaskContext) -> Any:
    """Run the operations; on a failure, compensate what succeeded, in reverse order."""
    try:
        spec = tx.Saga.model_validate(payload)
    except ValidationError as exc:
        raise HandlerError(f"invalid transaction: {exc}", retryable=False) from None
    tx_id = context.task_id
    records = [
        tx.OperationRecord(id=o.id, fleet=o.fleet, handler=o.handler) for o in spec.operations
    ]
    for i, op in enumerate(spec.operations):
        outcome = await _one(context, Call(op.fleet, op.handler, op.input, tx.op_task(tx_id, op)))
        state = tx.OpState.SUCCEEDED if outcome.succeeded else tx.OpState.FAILED
        records[i] = records[i].model_copy(
            update={"state": state, "output": outcome.output, "error": outcome.error}
        )
        if not outcome.succeeded:
            break
    for i in tx.to_undo(records, spec):
        op = spec.operations[i]
        fleet, undo, undo_input = tx.undo_call(op, records[i].output)
        outcome = await _one(context, Call(fleet, undo, undo_input, tx.undo_task(tx_id, op)))
        state = tx.OpState.COMPENSATED if outcome.succeeded else tx.OpState.COMPENSATION_FAILED
        records[i] = records[i].model_copy(update={"state": state, "error": outcome.error})
    record = tx.Transaction(
        id=tx_id, operations=records, status=tx.settled(records), timestamp=dt.datetime.now(dt.UTC)
    )
    return record.model_dump(mode="json")
