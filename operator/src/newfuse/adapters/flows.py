"""Workflows and transactions as the CLI sees them: submit, read their state, cancel them.

A workflow or transaction is a coordinator task (the `workflow` or `saga` handler) on some fleet;
its definition is kept next to it (`FleetKeys.flows`, a week) so that `status` can show every
task, started or not. State is read where it lives: the coordinator's result, and each child's
result on its own fleet (children are `<id>.<task>`, `<id>.op.<op>`, `<id>.undo.<op>`).
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from typing import Any, Final

from newfuse.adapters.a2astore import A2AStore
from newfuse.adapters.taskclient import TaskClient, TaskSpec
from newfuse.core import saga as tx
from newfuse.core import workflow as dag
from newfuse.wire.keys import FleetKeys
from newfuse.wire.tasks import ResultPayload, ResultStatus

KEPT_SECONDS: Final = 7 * 86400.0
WORKFLOW: Final = "workflow"
SAGA: Final = "saga"


@dataclass(frozen=True)
class ChildState:
    """One workflow task or transaction step, as `status` shows it."""

    id: str
    fleet: str
    handler: str
    state: str
    detail: str = ""


class FlowStore:
    """The workflows and transactions coordinated on one fleet (its TaskClient's)."""

    def __init__(self, tasks: TaskClient, signing_key: bytes | None = None) -> None:
        """Read and write through ``tasks``' connection (children are on the same Redis).

        ``signing_key`` signs cancellations (a fleet that requires signatures believes no other).
        """
        self.tasks, self.keys, self._key = tasks, tasks.keys, signing_key

    def _store(self, fleet: str) -> A2AStore:
        client = TaskClient(self.tasks.client, self.keys.namespace, fleet)
        return A2AStore(client, signing_key=self._key)

    async def submit(self, kind: str, flow_id: str, spec: dict[str, Any]) -> bool:
        """Keep the definition, then enqueue its coordinator (idempotent by ``flow_id``)."""
        seconds, micros = await self.tasks.client.time()
        expires = int(seconds) * 1000 + int(micros) // 1000 + int(KEPT_SECONDS * 1000)
        record = json.dumps({"kind": kind, "spec": spec})
        pipe = self.tasks.client.pipeline(transaction=True)
        pipe.hsetnx(self.keys.flows, flow_id, record)
        pipe.zadd(FleetKeys.expiry_of(self.keys.flows), {flow_id: expires}, nx=True)
        await pipe.execute()
        submitted = await self.tasks.submit(TaskSpec(kind, spec, task_id=flow_id))
        return submitted.created

    async def definition(self, flow_id: str) -> tuple[str, dict[str, Any]] | None:
        """The kind and definition of a flow submitted here (None: none, or forgotten)."""
        raw = await self.tasks.client.hget(self.keys.flows, flow_id)
        if raw is None:
            return None
        record = json.loads(raw)
        return str(record["kind"]), dict(record["spec"])

    async def result(self, flow_id: str) -> ResultPayload | None:
        """The coordinator's result: the flow's end."""
        return await self.tasks.result(flow_id)

    async def _child(self, fleet: str, task_id: str) -> ResultPayload | str:
        client = TaskClient(self.tasks.client, self.keys.namespace, fleet)
        found = await client.result(task_id)
        if found is not None:
            return found
        known = await self.tasks.client.hexists(FleetKeys(self.keys.namespace, fleet).task_index,
                                                task_id)  # fmt: skip
        return "queued or running" if known else "not started"

    async def workflow_tasks(self, flow_id: str, spec: dag.Workflow) -> list[ChildState]:
        """Each task of the workflow with its state."""
        out = []
        for task in spec.tasks:
            found = await self._child(task.fleet, dag.child_id(flow_id, task))
            out.append(_state(task.id, task.fleet, task.handler, found))
        return out

    async def operations(self, flow_id: str, spec: tx.Saga) -> list[ChildState]:
        """Each operation of the transaction with its state (and its compensation's)."""
        out = []
        for op in spec.operations:
            done = await self._child(op.fleet, tx.op_task(flow_id, op))
            row = _state(op.id, op.fleet, op.handler, done)
            if op.compensate is not None:
                fleet = op.compensate.fleet or op.fleet
                undone = await self._child(fleet, tx.undo_task(flow_id, op))
                if isinstance(undone, ResultPayload):
                    state = "compensated" if _ok(undone) else "compensation_failed"
                    row = ChildState(op.id, op.fleet, op.handler, state, undone.error or "")
            out.append(row)
        return out

    async def cancel(self, flow_id: str, children: list[tuple[str, str]]) -> int:
        """Cancel the coordinator and the children (fleet, task id) that have not ended.

        A cancelled child that had not started never runs; the coordinator, cancelled first,
        starts nothing more. Returns how many were cancelled.
        """
        now = dt.datetime.now(dt.UTC)
        fleet = self.keys.fleet
        cancelled = int(await self._store(fleet).cancel(flow_id, now, why="cancelled"))
        for child_fleet, task_id in children:
            store = self._store(child_fleet)
            cancelled += int(await store.cancel(task_id, now, why="cancelled with its flow"))
        return cancelled

    async def abort(self, flow_id: str, spec: tx.Saga) -> int:
        """Make the transaction roll back: the operations that have not ended fail (cancelled).

        The coordinator then sees an operation fail and compensates those that succeeded, as on
        any failure. Returns how many operations were cancelled.
        """
        now = dt.datetime.now(dt.UTC)
        cancelled = 0
        why = "the transaction was aborted"
        for op in spec.operations:
            store = self._store(op.fleet)
            cancelled += int(await store.cancel(tx.op_task(flow_id, op), now, why=why))
        return cancelled


def _ok(result: ResultPayload) -> bool:
    return result.status is ResultStatus.SUCCEEDED


def _state(task_id: str, fleet: str, handler: str, found: ResultPayload | str) -> ChildState:
    if isinstance(found, str):
        return ChildState(task_id, fleet, handler, found)
    if _ok(found):
        return ChildState(task_id, fleet, handler, "succeeded", json.dumps(found.output)[:80])
    return ChildState(task_id, fleet, handler, "failed", found.error or "")
