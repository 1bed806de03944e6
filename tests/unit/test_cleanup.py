"""The finalizer: its decisions table by table, and the runtime driven through time with fakes.

The runtime tests use the default OperatorConfig, so the documented default wait (and that the
README documents it) is what they check.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
from pathlib import Path
from typing import Any, cast

import pytest
from redis.exceptions import ConnectionError as RedisConnectionError

from factories import NOW, pod
from newfuse.api.v1alpha1 import NewFuseAgent, Reason
from newfuse.config import DEFAULT_REDIS_CLEANUP_TIMEOUT_SECONDS, OperatorConfig
from newfuse.core import naming
from newfuse.core.cleanup import (
    CleanupFacts,
    Step,
    cleanup_deadline,
    next_step,
    released_after_removal,
    skip_requested,
)
from newfuse.core.pods import ObservedPod
from newfuse.runtime.finalizer import Finalizer
from newfuse.runtime.workqueue import WorkQueue

README = Path(__file__).resolve().parents[2] / "README.md"
S = dt.timedelta(seconds=1)
SETTLE = 6 * S


def facts(**overrides: Any) -> CleanupFacts:
    values: dict[str, Any] = {
        "skip_requested": False,
        "pods_undeleted": 0,
        "pods_left": 0,
        "now": NOW,
        "deadline": NOW + 120 * S,
        "removed_at": None,
        "settle": SETTLE,
    }
    return CleanupFacts(**(values | overrides))


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        (facts(), Step.REMOVE_KEYS),
        (facts(pods_undeleted=2, pods_left=3), Step.DELETE_PODS),
        (facts(pods_left=3), Step.WAIT_FOR_PODS),
        (facts(removed_at=NOW - S), Step.SETTLE),
        (facts(removed_at=NOW - SETTLE), Step.REMOVE_KEYS),
        (facts(skip_requested=True, pods_undeleted=3, pods_left=3), Step.SKIP),
        (facts(now=NOW + 120 * S, pods_left=1), Step.GIVE_UP),
        (facts(now=NOW + 120 * S, skip_requested=True), Step.SKIP),
        (facts(now=NOW + 119 * S, pods_undeleted=1, pods_left=1), Step.DELETE_PODS),
    ],
    ids=[
        "pods gone: remove keys",
        "pods not asked to go",
        "pods terminating",
        "keys just removed: settle",
        "settled: look again",
        "skip wins over everything",
        "deadline passed",
        "skip at the deadline",
        "just before the deadline",
    ],
)
def test_next_step(case: CleanupFacts, expected: Step) -> None:
    assert next_step(case) is expected


@pytest.mark.parametrize(
    ("deletion", "since", "expected"),
    [
        ("2026-11-21T12:00:00Z", NOW - 60 * S, NOW + 120 * S),
        ("2026-11-21T12:00:00Z", NOW + 60 * S, NOW + 180 * S),  # operator (re)started later
        (None, NOW, NOW + 120 * S),
        ("not a time", NOW, NOW + 120 * S),
        ("2026-11-21T12:05:00", NOW, NOW + 120 * S),  # no zone: not trusted
    ],
)
def test_deadline(deletion: str | None, since: dt.datetime, expected: dt.datetime) -> None:
    assert cleanup_deadline(deletion, since, 120 * S) == expected


@pytest.mark.parametrize(
    ("annotations", "expected"),
    [
        ({}, False),
        ({naming.SKIP_REDIS_CLEANUP_ANNOTATION: "true"}, True),
        ({naming.SKIP_REDIS_CLEANUP_ANNOTATION: " TRUE "}, True),
        ({naming.SKIP_REDIS_CLEANUP_ANNOTATION: "false"}, False),
        ({naming.SKIP_REDIS_CLEANUP_ANNOTATION: "yes"}, False),
    ],
)
def test_skip_annotation(annotations: dict[str, str], expected: bool) -> None:
    assert skip_requested(annotations) is expected


def test_only_an_empty_look_after_a_removal_releases() -> None:
    assert not released_after_removal(None, 0), "the first UNLINK never releases"
    assert not released_after_removal(NOW, 2), "keys came back: an agent still writes"
    assert released_after_removal(NOW, 0)


def test_readme_documents_the_default_wait() -> None:
    assert OperatorConfig().redis_cleanup_timeout_seconds == DEFAULT_REDIS_CLEANUP_TIMEOUT_SECONDS
    row = re.search(
        r"^\| `NEWFUSE_REDIS_CLEANUP_TIMEOUT_SECONDS` \| ([0-9.]+) \|", README.read_text(), re.M
    )
    assert row is not None, (
        "README's configuration table lacks NEWFUSE_REDIS_CLEANUP_TIMEOUT_SECONDS"
    )
    assert float(row.group(1)) == DEFAULT_REDIS_CLEANUP_TIMEOUT_SECONDS


# -- the runtime, with fakes ---------------------------------------------------------------------


class FakeKube:
    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []
        self.finalizers: list[str] | None = None
        self.deleted: list[str] = []

    async def post_event(self, *args: Any) -> None:
        _, _, _, kind, reason, message, _ = args
        self.events.append((kind, str(reason), message))

    async def set_finalizers(self, ns: str, name: str, finalizers: list[str], rv: str) -> None:
        self.finalizers = finalizers

    async def delete_pod(self, ns: str, name: str) -> bool:
        self.deleted.append(name)
        return True


class FakeRedis:
    def __init__(self, removals: list[int | Exception]) -> None:
        self.removals = removals
        self.calls = 0

    async def delete_fleet(self, keys: Any) -> int:
        self.calls += 1
        outcome = self.removals.pop(0) if len(self.removals) > 1 else self.removals[0]
        if isinstance(outcome, Exception):
            raise outcome
        return outcome


def deleted_fleet(**annotations: str) -> NewFuseAgent:
    return NewFuseAgent.model_validate(
        {
            "metadata": {
                "name": "doomed",
                "namespace": "ns",
                "uid": "uid-1",
                "resourceVersion": "7",
                "deletionTimestamp": NOW.isoformat(),
                "finalizers": [naming.FINALIZER, "other/keep"],
                "annotations": annotations,
            },
            "spec": {"image": "agent:1"},
        }
    )


class Rig:
    """A Finalizer with the default config, fake clients and a settable clock."""

    def __init__(self, redis: FakeRedis, pods: list[ObservedPod] | None = None) -> None:
        self.now = NOW
        self.kube = FakeKube()
        self.redis = redis
        self.pods = pods or []
        self.finalizer = Finalizer(
            OperatorConfig(),
            cast(Any, self.kube),
            cast(Any, redis),
            WorkQueue(),
            lambda: self.now,
            lambda key: self.pods,
        )
        self.finalizer.started(NOW - 3600 * S)

    def step(self, fleet: NewFuseAgent, at: dt.timedelta) -> None:
        self.now = NOW + at

        async def run() -> None:
            await self.finalizer.finalize("ns/doomed", fleet)
            self.finalizer.queue.close()

        asyncio.run(run())

    def released(self) -> list[str] | None:
        """The fleet's finalizers once the finalizer let go (None while it holds on)."""
        return self.kube.finalizers

    @property
    def reasons(self) -> list[str]:
        return [reason for _, reason, _ in self.kube.events]


def test_redis_down_waits_the_default_120s_says_how_to_skip_then_lets_go() -> None:
    rig = Rig(FakeRedis([RedisConnectionError("Connection refused")]))
    fleet = deleted_fleet()
    for second in (0, 2, 60, 119):
        rig.step(fleet, second * S)
        assert rig.released() is None, f"released after {second}s"
    [(kind, reason, message)] = rig.kube.events
    assert (kind, reason) == ("Warning", Reason.REDIS_CLEANUP_WAITING)
    assert "Connection refused" in message
    assert "NEWFUSE_REDIS_CLEANUP_TIMEOUT_SECONDS=120" in message
    assert f"{naming.SKIP_REDIS_CLEANUP_ANNOTATION}=true" in message
    rig.step(fleet, 120 * S)
    assert rig.released() == ["other/keep"], "only our finalizer is removed"
    assert rig.reasons == [Reason.REDIS_CLEANUP_WAITING, Reason.REDIS_CLEANUP_SKIPPED]
    assert "gave up after 120s" in rig.kube.events[-1][2]


def test_the_annotation_skips_at_once_without_calling_redis() -> None:
    rig = Rig(FakeRedis([RedisConnectionError("down")]), pods=[pod(0)])
    rig.step(deleted_fleet(**{naming.SKIP_REDIS_CLEANUP_ANNOTATION: "true"}), 0 * S)
    assert rig.released() == ["other/keep"]
    assert rig.redis.calls == 0
    assert rig.kube.deleted == []
    assert rig.reasons == [Reason.REDIS_CLEANUP_SKIPPED]


def test_pods_go_first_then_keys_until_none_come_back() -> None:
    rig = Rig(FakeRedis([5, 2, 0]), pods=[pod(0), pod(1, terminating=True)])
    fleet = deleted_fleet()
    rig.step(fleet, 0 * S)
    assert rig.kube.deleted == [pod(0).name], "only pods not yet terminating are deleted"
    assert rig.redis.calls == 0, "no key is removed while a pod (and its agent) may still write"
    rig.pods = [pod(0, terminating=True), pod(1, terminating=True)]
    rig.step(fleet, 1 * S)
    assert rig.redis.calls == 0
    rig.pods = []
    rig.step(fleet, 2 * S)  # removes 5
    rig.step(fleet, 3 * S)  # settling: Redis is not called
    assert rig.redis.calls == 1
    rig.step(fleet, 8 * S)  # settled (heartbeat 5 s + 1 s): 2 came back, removed again
    assert rig.released() is None
    rig.step(fleet, 14 * S)  # nothing came back: done
    assert rig.redis.calls == 3
    assert rig.released() == ["other/keep"]
    assert rig.kube.events == [
        ("Normal", Reason.REDIS_KEYS_REMOVED, "removed 7 Redis key(s) of the fleet")
    ]


def test_pods_that_never_go_do_not_hold_the_fleet_past_the_deadline() -> None:
    rig = Rig(FakeRedis([4]), pods=[pod(0, terminating=True)])
    fleet = deleted_fleet()
    rig.step(fleet, 119 * S)
    assert rig.released() is None
    assert rig.redis.calls == 0
    rig.step(fleet, 120 * S)
    assert rig.released() == ["other/keep"]
    assert rig.redis.calls == 1, "a last try at the keys"
    kind, reason, message = rig.kube.events[-1]
    assert (kind, reason) == ("Warning", Reason.REDIS_CLEANUP_SKIPPED)
    assert "1 pod(s)" in message
    assert "removed 4" in message
