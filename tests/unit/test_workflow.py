"""Workflows and sagas: the pure rules, table-tested (what may start, is stuck, is undone)."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from newfuse.core import saga as tx
from newfuse.core import workflow as dag
from newfuse.core.workflow import Ended


def flow(*tasks: dict[str, Any], result: str | None = None) -> dag.Workflow:
    return dag.Workflow.model_validate(
        {"tasks": [{"fleet": "f", "handler": "h", **t} for t in tasks], "result": result}
    )


@pytest.mark.parametrize(
    ("tasks", "error"),
    [
        ([{"id": "a"}, {"id": "a"}], "duplicate task ids: a"),
        ([{"id": "a", "needs": ["zz"]}], "task a needs unknown tasks: zz"),
        ([{"id": "a", "needs": ["b"]}, {"id": "b", "needs": ["a"]}], "a cycle: "),
        ([{"id": "a", "needs": ["a"]}], "a cycle: a -> a"),
        ([{"id": "a", "needs": ["b"], "aggregate": "quorum"}, {"id": "b"}], "quorum needs"),
        ([{"id": "a", "needs": ["b"], "aggregate": "quorum", "quorum": 2}, {"id": "b"}], "quorum"),
        ([{"id": "bad id"}], "pattern"),
    ],
)
def test_invalid_workflows_are_refused_naming_why(tasks: list[dict[str, Any]], error: str) -> None:
    with pytest.raises((ValidationError, dag.WorkflowError), match=error):
        flow(*tasks)


def test_a_cycle_is_named_in_order() -> None:
    with pytest.raises(ValidationError) as refused:
        flow({"id": "a", "needs": ["c"]}, {"id": "b", "needs": ["a"]}, {"id": "c", "needs": ["b"]})
    named = str(refused.value)
    loops = ("a -> c -> b -> a", "c -> b -> a -> c", "b -> a -> c -> b")
    assert any(f"{loop} (each needs the next)" in named for loop in loops), named


def test_an_unknown_result_is_refused() -> None:
    with pytest.raises(ValidationError, match="result names no task: zz"):
        flow({"id": "a"}, result="zz")


OK, BAD = Ended(succeeded=True, output=1), Ended(succeeded=False, error="boom")
FAN_IN = flow(
    {"id": "x"}, {"id": "y"}, {"id": "z"},
    {"id": "all", "needs": ["x", "y", "z"]},
    {"id": "any", "needs": ["x", "y", "z"], "aggregate": "any"},
    {"id": "two", "needs": ["x", "y", "z"], "aggregate": "quorum", "quorum": 2},
)  # fmt: skip


@pytest.mark.parametrize(
    ("ended", "ready"),
    [
        ({}, ["x", "y", "z"]),
        ({"x": OK}, ["y", "z", "any"]),
        ({"x": OK, "y": BAD}, ["z", "any"]),
        ({"x": OK, "y": OK}, ["z", "any", "two"]),
        ({"x": OK, "y": OK, "z": OK}, ["all", "any", "two"]),
        ({"x": BAD, "y": BAD, "z": BAD}, []),
    ],
)
def test_what_may_start(ended: dict[str, Ended], ready: list[str]) -> None:
    assert [t.id for t in dag.ready(FAN_IN, ended)] == ready


def test_stuck_names_the_failures_and_what_cannot_run() -> None:
    ended = {"x": BAD, "y": BAD, "z": BAD}
    why = dag.stuck(FAN_IN, ended)
    assert why is not None
    assert "x: boom" in why
    assert "3 task(s) cannot run: all, any, two" in why
    assert dag.stuck(FAN_IN, {}) is None


def test_fan_in_passes_the_needs_outputs() -> None:
    total = flow({"id": "a"}, {"id": "s", "needs": ["a"], "input": {"op": "sum"}}).tasks[1]
    assert dag.task_input(total, {"a": OK}) == {"op": "sum", "needs": {"a": 1}}
    plain = flow({"id": "a"}, {"id": "s", "needs": ["a"], "input": 5}).tasks[1]
    assert dag.task_input(plain, {"a": OK}) == {"input": 5, "needs": {"a": 1}}
    assert dag.child_id("wf", plain) == "wf.s"


def saga(*compensated: bool) -> tx.Saga:
    return tx.Saga.model_validate(
        {
            "operations": [
                {"id": f"o{i}", "fleet": "f", "handler": "h",
                 **({"compensate": {"handler": "undo"}} if c else {})}
                for i, c in enumerate(compensated)
            ]
        }
    )  # fmt: skip


def records(*states: tx.OpState) -> list[tx.OperationRecord]:
    return [
        tx.OperationRecord(id=f"o{i}", fleet="f", handler="h", state=s)
        for i, s in enumerate(states)
    ]


S, F, P = tx.OpState.SUCCEEDED, tx.OpState.FAILED, tx.OpState.PENDING


@pytest.mark.parametrize(
    ("compensated", "states", "undo"),
    [
        ((True, True, True, True), (S, S, S, S), []),
        ((True, True, True, True), (S, S, F, P), [1, 0]),
        ((True, False, True, True), (S, S, F, P), [0]),
        ((True, True), (F, P), []),
    ],
)
def test_what_to_undo_last_first(
    compensated: tuple[bool, ...], states: tuple[tx.OpState, ...], undo: list[int]
) -> None:
    assert tx.to_undo(records(*states), saga(*compensated)) == undo


@pytest.mark.parametrize(
    ("states", "status"),
    [
        ((S, S), tx.TxStatus.COMMITTED),
        ((tx.OpState.COMPENSATED, F), tx.TxStatus.ROLLED_BACK),
        ((F, P), tx.TxStatus.ROLLED_BACK),
        ((tx.OpState.COMPENSATION_FAILED, F), tx.TxStatus.ROLLBACK_FAILED),
    ],
)
def test_how_a_transaction_settles(states: tuple[tx.OpState, ...], status: tx.TxStatus) -> None:
    assert tx.settled(records(*states)) == status


def test_a_compensation_gets_the_operations_input_and_output_by_default() -> None:
    op = tx.Operation.model_validate(
        {"id": "book", "fleet": "f", "handler": "h", "input": 7, "compensate": {"handler": "u"}}
    )
    assert tx.undo_call(op, {"ref": 1}) == ("f", "u", {"input": 7, "output": {"ref": 1}})
    assert (tx.op_task("t", op), tx.undo_task("t", op)) == ("t.op.book", "t.undo.book")


def test_operation_ids_are_unique() -> None:
    with pytest.raises(ValidationError, match="unique"):
        tx.Saga.model_validate({"operations": [{"id": "a", "fleet": "f", "handler": "h"}] * 2})
