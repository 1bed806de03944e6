"""The operator's caches: compact fleets that parse back whole, and gauges kept as running counts.

Both exist for 10,000 fleets: parsed models cost ~9 KB a fleet, and recounting every fleet after
each reconcile made the operator's total work quadratic in the fleet count.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
from prometheus_client import REGISTRY

from factories import pod_body
from newfuse.api.rollout import RolloutPhase
from newfuse.api.v1alpha1 import NewFuseAgentStatus, Phase
from newfuse.core import naming
from newfuse.runtime.caches import Caches, Tally
from newfuse.runtime.watch import fleet_key

pytestmark = pytest.mark.unit


def _fleet(name: str, rv: str = "5", uid: str = "uid-1", replicas: int = 1) -> dict[str, Any]:
    return {
        "apiVersion": "newfuse.io/v1alpha1",
        "kind": "NewFuseAgent",
        "metadata": {
            "name": name,
            "namespace": "ns",
            "uid": uid,
            "resourceVersion": rv,
            "generation": 1,
            "managedFields": [{"manager": "kubectl", "fieldsV1": {"f:spec": {}}}],
        },
        "spec": {"image": "agent:1", "replicas": replicas},
    }


def _pod(fleet: str, ordinal: int) -> dict[str, Any]:
    labels = {
        naming.LABEL_FLEET: fleet,
        naming.LABEL_REVISION: "rev1",
        naming.LABEL_ORDINAL: str(ordinal),
    }
    body = pod_body(name=f"{fleet}-rev1-{ordinal}", labels=labels)
    body["metadata"]["namespace"] = "ns"
    return body


def _gauge(name: str, phase: str | None = None) -> float | None:
    return REGISTRY.get_sample_value(name, {"phase": phase} if phase else {})


@pytest.mark.parametrize(
    ("steps", "expected"),
    [
        ([("a", "x")], {"x": 1}),
        ([("a", "x"), ("b", "x")], {"x": 2}),
        ([("a", "x"), ("a", "y")], {"x": 0, "y": 1}),
        ([("a", "x"), ("a", "x")], {"x": 1}),
        ([("a", "x"), ("a", None)], {"x": 0}),
        ([("a", None)], {"x": 0}),
    ],
    ids=["one", "two", "moved", "same-twice", "popped", "pop-unknown"],
)
def test_a_tally_counts_each_key_once(
    steps: list[tuple[str, str | None]], expected: dict[str, int]
) -> None:
    tally = Tally()
    for key, value in steps:
        if value is None:
            tally.pop(key)
        else:
            tally.set(key, value)
    assert {value: tally.count(value) for value in expected} == expected


def test_a_cached_fleet_parses_back_whole() -> None:
    caches = Caches()
    key = caches.put_fleet(_fleet("demo", replicas=3))
    assert key == fleet_key("ns", "demo")
    first = caches.fleets[key]
    assert (first.metadata.name, first.spec.replicas, first.metadata.uid) == ("demo", 3, "uid-1")
    assert caches.fleets[key] == first  # parsed again from the same bytes
    assert caches.fleets.version(key) == ("uid-1", "5")
    assert list(caches.fleets) == [key]
    assert len(caches.fleets) == 1


def test_an_older_event_cannot_roll_the_cache_back_but_a_new_object_can() -> None:
    caches = Caches()
    key = fleet_key("ns", "demo")
    assert caches.put_fleet(_fleet("demo", rv="9", replicas=2)) == key
    assert caches.put_fleet(_fleet("demo", rv="7", replicas=5)) is None
    assert caches.fleets[key].spec.replicas == 2
    # Deleted and created again under the same name: another uid, so its lower version wins.
    assert caches.put_fleet(_fleet("demo", rv="3", uid="uid-2", replicas=4)) == key
    assert caches.fleets[key].spec.replicas == 4
    caches.drop_fleet(key)
    assert key not in caches.fleets
    assert caches.fleets.get(key) is None


def test_the_echo_of_a_cached_version_is_not_queued_again() -> None:
    caches = Caches()
    key = fleet_key("ns", "demo")
    assert caches.put_fleet(_fleet("demo", rv="9", replicas=2)) == key
    # The watch delivers the write the operator already cached through its response.
    assert caches.put_fleet(_fleet("demo", rv="9", replicas=2)) is None
    assert caches.put_fleet(_fleet("demo", rv="10", replicas=2)) == key
    # The same version of another object (same name, new uid) is not an echo.
    assert caches.put_fleet(_fleet("demo", rv="10", uid="uid-2", replicas=2)) == key


def test_the_gauges_follow_fleets_and_pods_as_they_come_and_go() -> None:
    caches = Caches()
    for name, phase in (("a", Phase.AVAILABLE), ("b", Phase.AVAILABLE), ("c", Phase.DEGRADED)):
        caches.record(fleet_key("ns", name), NewFuseAgentStatus(phase=phase))
    for fleet, ordinal in (("a", 0), ("a", 1), ("b", 0)):
        caches.put_pod("ADDED", _pod(fleet, ordinal))
    caches.put_pod("MODIFIED", _pod("a", 0))  # the same pod again: still one pod
    caches.put_pod("DELETED", _pod("b", 0))
    caches.put_pod("DELETED", _pod("b", 0))  # a repeated delete: still gone once
    caches.record(fleet_key("ns", "b"), NewFuseAgentStatus(phase=Phase.PROGRESSING))
    caches.drop_fleet(fleet_key("ns", "c"))
    caches.refresh_gauges(queue_depth=4)
    assert _gauge("newfuse_fleets", "Available") == 1
    assert _gauge("newfuse_fleets", "Progressing") == 1
    assert _gauge("newfuse_fleets", "Degraded") == 0
    assert _gauge("newfuse_pods_managed") == 2
    assert _gauge("newfuse_rollout_phase", RolloutPhase.PROGRESSING.value) == 0
    assert _gauge("newfuse_workqueue_depth") == 4


def _refresh_seconds(fleets: int) -> float:
    caches = Caches()
    for index in range(fleets):
        caches.record(fleet_key("ns", f"f{index}"), NewFuseAgentStatus(phase=Phase.AVAILABLE))
    started = time.perf_counter()
    for _ in range(200):
        caches.refresh_gauges(queue_depth=0)
    return time.perf_counter() - started


def test_refreshing_the_gauges_costs_the_same_at_ten_fleets_and_at_twenty_thousand() -> None:
    # Counting 20,000 fleets per refresh would be ~2,000 times slower; 5x leaves room for noise.
    small, large = _refresh_seconds(10), _refresh_seconds(20_000)
    assert large < 5 * small + 0.05, f"{large:.3f}s at 20,000 fleets vs {small:.3f}s at 10"
