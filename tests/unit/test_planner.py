"""The planner, table by table: scale, replace, recreate, pause, failures, terminating pods."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest

from factories import pod
from newfuse.core.planner import DeleteReason, Plan, PodToCreate, plan, plan_revisions
from newfuse.core.pods import ObservedPod, PodHealth

R, S = DeleteReason.REPLACED, DeleteReason.SCALE_DOWN


@dataclass
class Case:
    replicas: int
    pods: list[ObservedPod]
    create: list[tuple[str, int]] = field(default_factory=list)
    delete: list[tuple[str, DeleteReason]] = field(default_factory=list)
    blocked: list[str] = field(default_factory=list)
    revision: str = "rev1"
    paused: bool = False


CASES = {
    "empty fleet creates ordinals 0..n-1": Case(
        3, [], create=[("rev1", 0), ("rev1", 1), ("rev1", 2)]
    ),
    "converged fleet needs nothing": Case(3, [pod(0), pod(1), pod(2)]),
    "not-yet-ready pods are left alone": Case(2, [pod(0, health=PodHealth.STARTING), pod(1)]),
    "scale up adds the next ordinals": Case(4, [pod(0), pod(1)], create=[("rev1", 2), ("rev1", 3)]),
    "scale down removes highest ordinals first": Case(
        2, [pod(0), pod(1), pod(2), pod(3)], delete=[("demo-rev1-3", S), ("demo-rev1-2", S)]
    ),
    "scale to zero removes everything": Case(
        0, [pod(0), pod(1)], delete=[("demo-rev1-1", S), ("demo-rev1-0", S)]
    ),
    "a deleted pod is recreated with its ordinal": Case(3, [pod(0), pod(2)], create=[("rev1", 1)]),
    "a terminating pod blocks its ordinal": Case(
        2, [pod(0), pod(1, terminating=True)], blocked=["demo-rev1-1"]
    ),
    "a failed pod is deleted (then recreated)": Case(
        2,
        [pod(0), pod(1, health=PodHealth.FAILED)],
        delete=[("demo-rev1-1", DeleteReason.FAILED)],
        create=[("rev1", 1)],
    ),
    "a crash-looping pod is kept (the kubelet restarts it)": Case(
        1, [pod(0, health=PodHealth.CRASH_LOOPING)]
    ),
    "paused: no changes at all": Case(3, [pod(0)], paused=True),
    "new revision: all new pods created, old kept while none is ready": Case(
        2, [pod(0, "old"), pod(1, "old")], revision="new", create=[("new", 0), ("new", 1)]
    ),
    "new revision: old pods go one for one as new ones are ready": Case(
        3,
        [
            pod(0, "old"),
            pod(1, "old"),
            pod(2, "old"),
            pod(0, "new"),
            pod(1, "new", PodHealth.STARTING),
        ],
        revision="new",
        create=[("new", 2)],
        delete=[("demo-old-2", R)],
    ),
    "new revision fully ready: every old pod goes": Case(
        2,
        [pod(0, "old"), pod(1, "old"), pod(0, "new"), pod(1, "new")],
        revision="new",
        delete=[("demo-old-1", R), ("demo-old-0", R)],
    ),
    "not-ready old pods go before ready ones": Case(
        2,
        [
            pod(0, "old", PodHealth.STARTING),
            pod(1, "old"),
            pod(0, "new"),
            pod(1, "new", PodHealth.STARTING),
        ],
        revision="new",
        delete=[("demo-old-0", R)],
    ),
}


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_plan(case: Case) -> None:
    result = plan(case.replicas, case.revision, case.pods, paused=case.paused)
    assert list(result.create) == [PodToCreate(r, o) for r, o in case.create]
    assert [(d.name, d.reason) for d in result.delete] == case.delete
    assert list(result.blocked) == case.blocked


@pytest.mark.parametrize("replicas", [0, 1, 3, 7])
def test_applying_a_plan_then_planning_again_converges(replicas: int) -> None:
    """Idempotence: after the plan is applied (and pods became ready), the next plan is empty."""
    pods = [pod(0, "old"), pod(5, "old")]
    for _ in range(4):
        result = plan(replicas, "new", pods)
        deleted = {d.name for d in result.delete}
        pods = [p for p in pods if p.name not in deleted] + [
            pod(c.ordinal, c.revision) for c in result.create
        ]
    assert plan(replicas, "new", pods).empty
    assert sorted(p.ordinal for p in pods) == list(range(replicas))
    assert {p.revision for p in pods} <= {"new"}


REVISION_CASES = {
    "canary first: stable kept, one canary created": (
        {"old": 3, "new": 1},
        [pod(0, "old"), pod(1, "old"), pod(2, "old")],
        [("new", 0)],
        [],
    ),
    "canary ready: one stable goes, highest ordinal": (
        {"old": 2, "new": 1},
        [pod(0, "old"), pod(1, "old"), pod(2, "old"), pod(0, "new")],
        [],
        [("demo-old-2", S)],
    ),
    "a not-ready stable pod goes before a ready one": (
        {"old": 1, "new": 2},
        [pod(0, "old", PodHealth.STARTING), pod(1, "old"), pod(0, "new"), pod(1, "new")],
        [],
        [("demo-old-0", S)],
    ),
    "rollback: every canary pod goes, stable refilled": (
        {"old": 3},
        [pod(0, "old"), pod(1, "old"), pod(0, "new")],
        [("old", 2)],
        [("demo-new-0", R)],
    ),
    "new canary pods take the lowest free ordinals": (
        {"new": 3},
        [pod(1, "new")],
        [("new", 0), ("new", 2)],
        [],
    ),
    "a terminating pod still blocks its ordinal": (
        {"new": 1},
        [pod(0, "new", terminating=True)],
        [],
        [],
    ),
}


@pytest.mark.parametrize(
    ("desired", "pods", "create", "delete"), REVISION_CASES.values(), ids=REVISION_CASES.keys()
)
def test_plan_revisions(
    desired: dict[str, int],
    pods: list[ObservedPod],
    create: list[tuple[str, int]],
    delete: list[tuple[str, DeleteReason]],
) -> None:
    result = plan_revisions(desired, pods)
    assert list(result.create) == [PodToCreate(r, o) for r, o in create]
    assert [(d.name, d.reason) for d in result.delete] == delete


def test_plan_revisions_is_idempotent_once_applied() -> None:
    pods = [pod(0, "old"), pod(1, "old"), pod(2, "old"), pod(0, "new")]
    desired = {"old": 1, "new": 2}
    for _ in range(3):
        result = plan_revisions(desired, pods)
        gone = {d.name for d in result.delete}
        pods = [p for p in pods if p.name not in gone] + [
            pod(c.ordinal, c.revision) for c in result.create
        ]
    assert plan_revisions(desired, pods).empty
    assert sorted((p.revision, p.ordinal) for p in pods) == [("new", 0), ("new", 1), ("old", 0)]


def test_plan_revisions_reports_blocked_ordinals_and_replaces_failed_pods() -> None:
    pods = [pod(0, "new", terminating=True), pod(1, "old", PodHealth.FAILED), pod(0, "old")]
    result = plan_revisions({"new": 2, "old": 1}, pods)
    assert list(result.blocked) == ["demo-new-0"]
    assert list(result.create) == [PodToCreate("new", 1)]
    assert [(d.name, d.reason) for d in result.delete] == [("demo-old-1", DeleteReason.FAILED)]


def test_a_paused_fleet_plans_nothing_whatever_it_sees() -> None:
    pods = [pod(0, "old"), pod(1, "old", PodHealth.FAILED), pod(7, "new")]
    assert plan_revisions({"new": 3}, pods, paused=True) == Plan()
    assert plan_revisions({"new": 3}, pods, paused=False) != Plan()
    assert plan(3, "new", pods, paused=True) == Plan()
