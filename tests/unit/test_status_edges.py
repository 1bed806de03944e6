"""Status at its edges: long lists and errors cut to size, and what stays while nothing is new."""

from __future__ import annotations

import dataclasses

import pytest

from factories import NOW, fleet, pod
from newfuse.api.rollout import RolloutPhase, RolloutState
from newfuse.api.tasks import Backlog
from newfuse.api.v1alpha1 import ConditionType, NewFuseAgent, NewFuseAgentStatus, Reason
from newfuse.core.planner import Plan, plan
from newfuse.core.pods import ObservedPod, PodHealth
from newfuse.core.status import RedisObservation, StatusInputs, derive_status


def derive(
    f: NewFuseAgent,
    pods: list[ObservedPod],
    revision: str = "rev1",
    *,
    redis: RedisObservation | None = None,
    backlog: Backlog | None = None,
    rollout: RolloutState | None = None,
) -> NewFuseAgentStatus:
    decided = plan(f.spec.replicas, revision, pods)
    inputs = StatusInputs(
        f, revision, pods, decided, True, redis, None, NOW, rollout=rollout, backlog=backlog
    )
    return derive_status(inputs)


def message_of(status: NewFuseAgentStatus, kind: ConditionType) -> str:
    return next(c.message for c in status.conditions if c.type == kind)


@pytest.mark.parametrize(
    ("failing", "tail"),
    [(5, "demo-rev1-4"), (6, "demo-rev1-4 and 1 more")],
)
def test_failing_pods_are_named_up_to_five(failing: int, tail: str) -> None:
    pods = [pod(i, health=PodHealth.FAILED) for i in range(failing)]
    message = message_of(derive(fleet(replicas=failing), pods), ConditionType.DEGRADED)
    assert message.endswith(tail)


def test_a_redis_error_is_cut_to_1024_characters() -> None:
    error = "x" * 2000
    status = derive(fleet(), [], redis=RedisObservation(reachable=False, error=error))
    assert message_of(status, ConditionType.REDIS_CONNECTED) == "x" * 1024


def test_a_rolled_back_fleet_says_why_in_its_conditions() -> None:
    rollout = RolloutState(
        phase=RolloutPhase.ROLLED_BACK,
        stable_revision="old",
        canary_revision="rev1",
        step_started_at=NOW,
        message="gate failed: error rate 40.0%",
    )
    status = derive(fleet(replicas=1), [pod(0, "old")], rollout=rollout)
    for kind in (ConditionType.PROGRESSING, ConditionType.DEGRADED):
        condition = next(c for c in status.conditions if c.type == kind)
        assert (condition.reason, condition.message) == (
            Reason.ROLLED_BACK,
            "gate failed: error rate 40.0%",
        )


def test_the_current_revision_is_kept_until_the_fleet_converges() -> None:
    before = fleet(replicas=3)
    before = before.model_copy(
        update={"status": before.status.model_copy(update={"current_revision": "a"})}
    )
    pods = [pod(0, "b"), pod(1, "b"), pod(2, "a", PodHealth.STARTING)]
    assert derive(before, pods, revision="b").current_revision == "a"
    first = derive(fleet(replicas=3), pods, revision="c")  # nothing known before: the majority
    assert first.current_revision == "b"


def test_the_last_known_backlog_stays_until_redis_says_again() -> None:
    seen = derive(fleet(), [], backlog=Backlog(waiting=7))
    assert seen.backlog == Backlog(waiting=7)
    later = fleet().model_copy(update={"status": seen})
    assert derive(later, []).backlog == Backlog(waiting=7)
    assert derive(later, [], backlog=Backlog(waiting=0)).backlog == Backlog(waiting=0)


@pytest.mark.parametrize(
    "value",
    [
        RedisObservation(reachable=True),
        StatusInputs(fleet(), "rev1", [], Plan(), True, None, None, NOW),
    ],
)
def test_what_status_is_derived_from_cannot_be_edited(value: object) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.now = NOW  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("gateway", "expected"),
    [
        (None, None),
        ("", None),
        ("https://agents.example.com", "https://agents.example.com/a2a/ns/demo/"),
        ("http://gw:8080/", "http://gw:8080/a2a/ns/demo/"),
    ],
    ids=["no gateway", "empty", "public URL", "trailing slash"],
)
def test_status_names_the_fleets_a2a_endpoint_on_the_gateway(
    gateway: str | None, expected: str | None
) -> None:
    f = fleet()
    inputs = StatusInputs(f, "rev1", [], Plan(), True, None, None, NOW, gateway_url=gateway)
    status = derive_status(inputs)
    assert (status.endpoints.a2a if status.endpoints else None) == expected
    written = status.model_dump(by_alias=True, exclude_none=True).get("endpoints")
    assert written == ({"a2a": expected} if expected else None), "the field kubectl shows"
