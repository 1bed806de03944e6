"""The planner's edges: what a plan claims about itself, and pods that only look like they count."""

from __future__ import annotations

import dataclasses

import pytest

from factories import pod
from newfuse.core.planner import (
    DeleteReason,
    Plan,
    PodToCreate,
    PodToDelete,
    plan,
    plan_revisions,
)
from newfuse.core.pods import PodHealth


@pytest.mark.parametrize(
    ("value", "empty"),
    [
        (Plan(), True),
        (Plan(blocked=("demo-rev1-0",)), True),  # waiting is not acting
        (Plan(create=(PodToCreate("rev1", 0),)), False),
        (Plan(delete=(PodToDelete("demo-rev1-0", DeleteReason.FAILED),)), False),
    ],
)
def test_a_plan_is_empty_when_it_creates_and_deletes_nothing(value: Plan, empty: bool) -> None:
    assert value.empty is empty


def test_a_surplus_pod_is_not_capacity_that_lets_old_pods_go() -> None:
    # Ordinal 2 of 2 replicas goes; only ordinal 0 of the new revision is Ready capacity, so one
    # Ready old pod stays until ordinal 1 is.
    pods = [pod(0, "new"), pod(2, "new"), pod(0, "old")]
    result = plan(2, "new", pods)
    assert [(d.name, d.reason) for d in result.delete] == [("demo-new-2", DeleteReason.SCALE_DOWN)]
    assert list(result.create) == [PodToCreate("new", 1)]


def test_another_revisions_terminating_pod_does_not_hold_an_ordinal() -> None:
    pods = [pod(0, "old", terminating=True), pod(1, "new", PodHealth.STARTING)]
    result = plan_revisions({"new": 2}, pods)
    assert list(result.create) == [PodToCreate("new", 0)]
    assert result.blocked == ()


@pytest.mark.parametrize(
    "value",
    [Plan(), PodToCreate("rev1", 0), PodToDelete("demo-rev1-0", DeleteReason.FAILED)],
)
def test_a_plan_cannot_be_edited_after_it_is_made(value: object) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.create = ()  # type: ignore[attr-defined]
