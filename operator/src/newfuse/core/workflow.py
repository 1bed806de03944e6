"""Workflows: tasks with dependencies (a DAG) across fleets, with fan-out and fan-in.

A workflow runs as one coordinator task (the built-in `workflow` handler) that delegates its
tasks level by level: each run of the handler computes, from the outcomes so far, which tasks may
start, delegates them all at once (`delegate_all`), and waits without a slot. So the workflow's
state is its coordinator's delegation outcomes, in Redis, and a crash of any agent or of the
operator loses nothing: the coordinator's next run recomputes the same next level. Child task ids
are `<workflow>.<task>`, so a task is submitted once whoever submits it.

Fan-in is a task's `needs`: it gets their outputs, when `aggregate` says so: `all` (every one
succeeded), `any` (one did), or `quorum` (`quorum` of them did). A reduce step is a task whose
handler folds its needs' outputs (the built-in `reduce`). Pure rules here, table-tested.
"""

from __future__ import annotations

import graphlib
from enum import StrEnum
from typing import Any, Final, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

MAX_TASKS: Final = 500
TASK_ID: Final = r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$"


class WorkflowError(ValueError):
    """A workflow that cannot run, with why (naming the task, or the cycle)."""


class Aggregate(StrEnum):
    """When a task with needs may start."""

    ALL = "all"
    ANY = "any"
    QUORUM = "quorum"


class WorkflowTask(BaseModel):
    """One task of a workflow."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    id: str = Field(pattern=TASK_ID)
    fleet: str = Field(min_length=1, max_length=63)
    handler: str = Field(min_length=1, max_length=64)
    input: Any = None
    needs: list[str] = Field(default_factory=list, max_length=MAX_TASKS)
    aggregate: Aggregate = Aggregate.ALL
    quorum: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _quorum(self) -> Self:
        if self.aggregate is Aggregate.QUORUM and not (
            self.quorum is not None and self.quorum <= len(self.needs)
        ):
            raise ValueError(f"task {self.id}: quorum needs a number from 1 to len(needs)")
        return self


class Workflow(BaseModel):
    """A DAG of tasks; `result` names the task whose output is the workflow's (default: all)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    tasks: list[WorkflowTask] = Field(min_length=1, max_length=MAX_TASKS)
    result: str | None = None

    @model_validator(mode="after")
    def _a_dag(self) -> Self:
        check(self)
        return self


def check(workflow: Workflow) -> None:
    """Refuse duplicate ids, unknown needs, an unknown result, and cycles (naming the cycle)."""
    ids = [t.id for t in workflow.tasks]
    duplicates = sorted({i for i in ids if ids.count(i) > 1})
    if duplicates:
        raise WorkflowError(f"duplicate task ids: {', '.join(duplicates)}")
    known = set(ids)
    for task in workflow.tasks:
        unknown = [n for n in task.needs if n not in known]
        if unknown:
            raise WorkflowError(f"task {task.id} needs unknown tasks: {', '.join(unknown)}")
    if workflow.result is not None and workflow.result not in known:
        raise WorkflowError(f"result names no task: {workflow.result}")
    try:
        graphlib.TopologicalSorter({t.id: t.needs for t in workflow.tasks}).prepare()
    except graphlib.CycleError as exc:
        cycle = list(reversed(exc.args[1]))
        raise WorkflowError(f"a cycle: {' -> '.join(cycle)} (each needs the next)") from None


class Ended(BaseModel):
    """How a workflow task ended."""

    model_config = ConfigDict(frozen=True)

    succeeded: bool
    output: Any = None
    error: str | None = None


def _enough(task: WorkflowTask) -> int:
    if task.aggregate is Aggregate.ANY:
        return min(1, len(task.needs))
    if task.aggregate is Aggregate.QUORUM and task.quorum is not None:
        return task.quorum
    return len(task.needs)


def ready(workflow: Workflow, ended: dict[str, Ended]) -> list[WorkflowTask]:
    """Tasks not run yet whose needs have succeeded enough, in the workflow's order."""
    out = []
    for task in workflow.tasks:
        if task.id in ended:
            continue
        succeeded = sum(1 for n in task.needs if n in ended and ended[n].succeeded)
        if succeeded >= _enough(task):
            out.append(task)
    return out


def stuck(workflow: Workflow, ended: dict[str, Ended]) -> str | None:
    """Why no task can run any more although some have not (None: not stuck)."""
    waiting = [t for t in workflow.tasks if t.id not in ended]
    if not waiting or ready(workflow, ended):
        return None
    failed = sorted(i for i, e in ended.items() if not e.succeeded)
    errors = "; ".join(f"{i}: {ended[i].error}" for i in failed[:5])
    return f"tasks failed ({errors}), so {len(waiting)} task(s) cannot run: " + ", ".join(
        t.id for t in waiting[:10]
    )


def task_input(task: WorkflowTask, ended: dict[str, Ended]) -> Any:
    """What a task gets: its input, with its needs' outputs under `needs` (fan-in)."""
    if not task.needs:
        return task.input
    needs = {n: ended[n].output for n in task.needs if n in ended and ended[n].succeeded}
    if isinstance(task.input, dict):
        return {**task.input, "needs": needs}
    return {"input": task.input, "needs": needs}


def child_id(workflow_id: str, task: WorkflowTask) -> str:
    """The delegated task's id: one per workflow task, whoever submits it."""
    return f"{workflow_id}.{task.id}"


def output(workflow: Workflow, ended: dict[str, Ended]) -> Any:
    """The workflow's output: its `result` task's, or every task's output by id."""
    if workflow.result is not None:
        return ended[workflow.result].output
    return {i: e.output for i, e in ended.items() if e.succeeded}
