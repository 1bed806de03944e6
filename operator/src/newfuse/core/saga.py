"""Transactions as sagas: operations on fleets, each with a compensating task, all or undone.

`Transaction{id, operations[], status active|committed|rolled_back, timestamp}`: the operations
run in order, each a task on some fleet. When all succeed the transaction commits. When one
fails, the compensations of the operations that succeeded run in reverse order; the status is then
`rolled_back` (or `rollback_failed` if a compensation failed too, after its task's own retries).

The coordinator is one task (the built-in `saga` handler) that delegates each step, so its
progress is its delegation outcomes in Redis: killed at any point, mid-rollback included, its next
run replays what is done and goes on. Operation and compensation task ids are
`<transaction>.op.<id>` and `<transaction>.undo.<id>`, so each is submitted once, and a stored
result is never run again: every compensation runs once. Pure rules here, table-tested.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any, Final, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from newfuse.core.workflow import TASK_ID

MAX_OPERATIONS: Final = 100


class Compensation(BaseModel):
    """What undoes an operation: a task on its fleet (or ``fleet``).

    Its input is ``input`` if given, else `{"input": <the operation's input>, "output": <its
    output>}`.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    handler: str = Field(min_length=1, max_length=64)
    fleet: str | None = Field(default=None, min_length=1, max_length=63)
    input: Any = None


class Operation(BaseModel):
    """One step of a transaction."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=TASK_ID)
    fleet: str = Field(min_length=1, max_length=63)
    handler: str = Field(min_length=1, max_length=64)
    input: Any = None
    compensate: Compensation | None = None


class Saga(BaseModel):
    """The operations of a transaction, in order."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    operations: list[Operation] = Field(min_length=1, max_length=MAX_OPERATIONS)

    @model_validator(mode="after")
    def _unique(self) -> Self:
        ids = [o.id for o in self.operations]
        if len(set(ids)) != len(ids):
            raise ValueError("operation ids must be unique")
        return self


class TxStatus(StrEnum):
    """Where a transaction stands."""

    ACTIVE = "active"
    COMMITTED = "committed"
    ROLLED_BACK = "rolled_back"
    ROLLBACK_FAILED = "rollback_failed"


class OpState(StrEnum):
    """Where an operation stands."""

    PENDING = "pending"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    COMPENSATED = "compensated"
    COMPENSATION_FAILED = "compensation_failed"


class OperationRecord(BaseModel):
    """An operation as the transaction reports it."""

    model_config = ConfigDict(frozen=True)

    id: str
    fleet: str
    handler: str
    state: OpState = OpState.PENDING
    output: Any = None
    error: str | None = None


class Transaction(BaseModel):
    """The transaction's record: the coordinator's output, and `newfuse tx status`."""

    model_config = ConfigDict(frozen=True)

    id: str
    operations: list[OperationRecord]
    status: TxStatus
    timestamp: dt.datetime


def op_task(tx_id: str, op: Operation) -> str:
    """The operation's task id."""
    return f"{tx_id}.op.{op.id}"


def undo_task(tx_id: str, op: Operation) -> str:
    """The operation's compensation task id."""
    return f"{tx_id}.undo.{op.id}"


def undo_call(op: Operation, output: Any) -> tuple[str, str, Any]:
    """The compensation's fleet, handler and input."""
    assert op.compensate is not None
    payload = op.compensate.input
    if payload is None:
        payload = {"input": op.input, "output": output}
    return op.compensate.fleet or op.fleet, op.compensate.handler, payload


def to_undo(records: list[OperationRecord], saga: Saga) -> list[int]:
    """The operations to compensate, last first: once one failed, those that succeeded."""
    if not any(r.state is OpState.FAILED for r in records):
        return []
    return [
        i
        for i in reversed(range(len(records)))
        if records[i].state is OpState.SUCCEEDED and saga.operations[i].compensate is not None
    ]


def settled(records: list[OperationRecord]) -> TxStatus:
    """The status of a transaction whose coordinator has finished with ``records``."""
    if all(r.state is OpState.SUCCEEDED for r in records):
        return TxStatus.COMMITTED
    if any(r.state is OpState.COMPENSATION_FAILED for r in records):
        return TxStatus.ROLLBACK_FAILED
    return TxStatus.ROLLED_BACK
