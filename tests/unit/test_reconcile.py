"""The controller's reconcile against in-memory Kubernetes and Redis (tests/fakes.py).

Each case acts once, then reconciles again at the same level and requires that the second pass
writes nothing: reconcile is level-based and idempotent, as kubebuilder's tests check it. The same
behaviours are covered end to end against a real API server in tests/e2e; here they run in
milliseconds and reach the branches a cluster makes hard to hit on purpose.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from fakes import FakeKube, FakeRedis
from newfuse.api.rollout import RolloutPhase, RolloutReason, Stage
from newfuse.api.v1alpha1 import NewFuseAgentStatus, Phase, Reason
from newfuse.config import OperatorConfig
from newfuse.core import naming
from newfuse.core.revision import template_hash
from newfuse.runtime.controller import Controller
from newfuse.runtime.watch import fleet_key
from newfuse.wire.keys import FleetKeys
from newfuse.wire.state import AgentStatus

NS, NAME = "team-a", "demo"
KEY = fleet_key(NS, NAME)
T0 = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
SPEC: dict[str, Any] = {"image": "agent:1", "replicas": 3}

pytestmark = pytest.mark.asyncio


class World:
    """One controller, its fakes, a clock, and the watch that feeds its caches."""

    def __init__(self) -> None:
        self.kube, self.redis, self.now = FakeKube(), FakeRedis(), T0
        self.controller = Controller(
            OperatorConfig(), self.kube, self.redis, clock=lambda: self.now
        )
        self._seen_pods: dict[str, dict[str, Any]] = {}

    def watch(self) -> None:
        """Deliver what changed to the controller's caches, as kopf's watches would."""
        body = self.kube.fleets.get((NS, NAME))
        if body is None:
            self.controller.observe_fleet("DELETED", {"metadata": {"namespace": NS, "name": NAME}})
        else:
            self.controller.observe_fleet("MODIFIED", body)
        current = {p["metadata"]["name"]: p for p in self.kube.pods_of(NS, NAME)}
        for name, gone in self._seen_pods.items():
            if name not in current:
                self.controller.observe_pod("DELETED", gone)
        for pod in current.values():
            self.controller.observe_pod("MODIFIED", pod)
        self._seen_pods = current

    async def reconcile(self) -> list[tuple[str, str]]:
        """One reconcile of the fleet after the watch; the Kubernetes writes it made."""
        self.watch()
        before = len(self.kube.writes)
        await self.controller.reconcile(KEY)
        self.watch()
        return self.kube.writes[before:]

    async def twice(self) -> list[tuple[str, str]]:
        """Reconcile, then require that reconciling again repeats none of its actions.

        The second pass may only bring status up to date (it now sees the pods the first one
        made, and says so if that changes the phase); a third pass writes nothing at all.
        """
        writes = await self.reconcile()
        again = await self.reconcile()
        catching_up = {("patch_fleet_status", NAME), ("event", Reason.PHASE_CHANGED)}
        assert set(again) <= catching_up, f"acted twice: {again}"
        assert await self.reconcile() == [], "reconcile does not settle at the same level"
        return writes + again

    async def running(self, spec: dict[str, Any] | None = None) -> None:
        """A fleet whose agents are all Ready and whose status says so."""
        self.kube.apply_fleet(NS, NAME, dict(spec or SPEC))
        await self.reconcile()  # the finalizer first
        await self.reconcile()
        self.kube.kubelet()
        await self.reconcile()
        assert self.status.phase is Phase.AVAILABLE

    async def canary_ready(self) -> str | None:
        """A running fleet given a new image, its first canary agent Ready; the stable revision."""
        await self.running()
        stable = self.status.current_revision
        self.kube.apply_fleet(NS, NAME, {**SPEC, "image": "agent:2"})
        await self.reconcile()
        self.kube.kubelet()
        await self.reconcile()
        return stable

    @property
    def status(self) -> NewFuseAgentStatus:
        return NewFuseAgentStatus.model_validate(self.kube.fleets[(NS, NAME)]["status"])

    def pods(self) -> list[tuple[str, str, bool]]:
        """(name, revision, terminating) of every pod of the fleet."""
        return [
            (
                p["metadata"]["name"],
                p["metadata"]["labels"][naming.LABEL_REVISION],
                bool(p["metadata"].get("deletionTimestamp")),
            )
            for p in self.kube.pods_of(NS, NAME)
        ]

    def reasons(self) -> list[str]:
        return [e.reason for e in self.kube.events]


def kinds(writes: list[tuple[str, str]]) -> list[str]:
    return [kind for kind, _ in writes]


async def test_the_finalizer_write_goes_through_the_cache_when_its_watch_event_lags() -> None:
    world = World()
    world.kube.apply_fleet(NS, NAME, SPEC)
    world.watch()
    await world.controller.reconcile(KEY)
    assert world.kube.writes == [("set_finalizers", NAME)]

    # No watch event in between (kopf's queues backed up at 10,000 fleets): the next reconcile
    # works from the written copy, not from the older one, which would meet 409 Conflict.
    await world.controller.reconcile(KEY)
    assert kinds(world.kube.writes).count("create_pod") == 3


async def test_create_adds_the_finalizer_then_the_pods() -> None:
    world = World()
    world.kube.apply_fleet(NS, NAME, SPEC)

    assert await world.reconcile() == [("set_finalizers", NAME)]
    assert world.kube.pods == {}  # pods come in the next reconcile, which the write queued

    writes = await world.twice()
    revision = template_hash(world.controller.fleets[KEY].spec)
    assert kinds(writes).count("create_pod") == 3
    assert [(n, r) for n, r, _ in world.pods()] == [
        (naming.pod_name(NAME, revision, i), revision) for i in range(3)
    ]
    assert world.reasons().count(Reason.POD_CREATED) == 3
    assert world.status.phase is Phase.PENDING
    assert world.status.observed_generation == 1

    world.kube.kubelet()
    assert kinds(await world.twice()) == ["patch_fleet_status", "event"]  # PhaseChanged
    ready = world.status
    assert ready.phase is Phase.AVAILABLE
    assert ready.ready_replicas == 3
    assert world.redis.fleet_states[FleetKeys(NS, NAME)].state.status == AgentStatus.ACTIVE


async def test_scale_down_deletes_the_highest_ordinals_once() -> None:
    world = World()
    await world.running()
    world.kube.apply_fleet(NS, NAME, {**SPEC, "replicas": 1})

    writes = await world.twice()
    deleted = sorted(name for kind, name in writes if kind == "delete_pod")
    assert [name[-1] for name in deleted] == ["1", "2"]
    assert [t for _, _, t in world.pods()] == [False, True, True]

    world.kube.kubelet()
    await world.twice()
    assert world.status.replicas == 1
    assert world.status.phase is Phase.AVAILABLE


async def test_a_failed_pod_is_replaced_at_its_ordinal() -> None:
    world = World()
    await world.running()
    failed = world.pods()[1][0]
    world.kube.fail_pod(NS, failed)

    writes = await world.twice()
    assert ("delete_pod", failed) in writes
    assert not any(kind == "create_pod" for kind in kinds(writes))  # not while it terminates

    world.kube.kubelet()
    assert ("create_pod", failed) in await world.twice()
    world.kube.kubelet()
    await world.twice()
    assert world.status.phase is Phase.AVAILABLE


async def test_a_rollout_step_moves_one_canary_then_the_gate_advances_it() -> None:
    world = World()
    await world.running()
    stable = world.status.current_revision
    assert stable is not None
    world.kube.apply_fleet(NS, NAME, {**SPEC, "image": "agent:2"})

    await world.twice()
    rollout = world.status.rollout
    assert rollout is not None
    assert rollout.phase is RolloutPhase.PROGRESSING
    canary = rollout.canary_revision
    assert canary != stable
    assert [r for _, r, _ in world.pods()].count(canary) == 1  # one surge pod, stable kept
    assert world.reasons().count(RolloutReason.STARTED) == 1

    world.kube.kubelet()
    await world.twice()
    # The canary soaks and finishes enough tasks; the stable agents did too.
    world.redis.counts[FleetKeys(NS, NAME)] = {canary: (20, 0, 0), stable: (100, 0, 0)}
    world.now = T0 + dt.timedelta(seconds=61)
    writes = await world.twice()
    rollout = world.status.rollout
    assert rollout is not None
    assert (rollout.stage, rollout.step, rollout.canary_agents) == (Stage.GRADUAL, 1, 2)
    assert world.reasons().count(RolloutReason.GATE_PASSED) == 1
    assert world.reasons().count(RolloutReason.STEP_STARTED) == 1
    assert ("create_pod", naming.pod_name(NAME, canary, 1)) in writes


async def test_abort_returns_every_agent_to_stable_and_acts_once() -> None:
    world = World()
    stable = await world.canary_ready()
    action = "abort@2026-11-21T12:00:05Z"
    world.kube.annotate(NS, NAME, naming.ROLLOUT_ACTION_ANNOTATION, action)

    writes = await world.twice()
    rollout = world.status.rollout
    assert rollout is not None
    assert rollout.phase is RolloutPhase.ABORTED
    assert rollout.last_action == action
    assert world.reasons().count(RolloutReason.ABORTED) == 1
    canary = rollout.canary_revision
    assert [n for k, n in writes if k == "delete_pod"] == [naming.pod_name(NAME, canary, 0)]

    world.kube.kubelet()
    await world.twice()
    assert {r for _, r, _ in world.pods()} == {stable}
    assert world.status.phase is Phase.DEGRADED  # held back from the spec, and says so


async def test_finalize_deletes_pods_then_keys_then_lets_the_fleet_go() -> None:
    world = World()
    await world.running()
    keys = FleetKeys(NS, NAME)
    world.kube.delete_fleet(NS, NAME, T0)

    writes = await world.twice()
    assert kinds(writes) == ["delete_pod"] * 3
    assert world.redis.deleted == []  # keys go only once no agent can write them again

    world.kube.kubelet()
    await world.twice()
    assert world.redis.deleted == [keys]
    assert (NS, NAME) in world.kube.fleets  # the settle period: a late heartbeat is removed too

    world.now += world.controller.finalizer.settle
    writes = await world.twice()
    assert kinds(writes) == ["event", "set_finalizers"]
    assert world.reasons()[-1] == Reason.REDIS_KEYS_REMOVED
    assert (NS, NAME) not in world.kube.fleets
    assert KEY not in world.controller.fleets


async def test_cutover_drains_the_legacy_revision_once_then_deletes_its_pods() -> None:
    world = World()
    stable = await world.canary_ready()
    world.kube.annotate(
        NS, NAME, naming.ROLLOUT_ACTION_ANNOTATION, "promote-full@2026-11-21T12:00:05Z"
    )
    await world.twice()  # stage 3: one surge pod at a time moves to the canary revision
    for _ in range(10):
        assert world.redis.drains == []
        world.kube.kubelet()
        await world.reconcile()
        if (
            world.status.rollout is not None
            and world.status.rollout.phase is RolloutPhase.COMPLETED
        ):
            break
    else:
        pytest.fail(f"the rollout never completed: {world.status.rollout}")

    assert world.redis.drains == [(FleetKeys(NS, NAME), f"revision:{stable}")]
    canary = world.status.rollout.canary_revision
    assert {r for _, r, terminating in world.pods() if not terminating} == {canary}
    await world.twice()
    assert len(world.redis.drains) == 1
    assert world.reasons().count(RolloutReason.COMPLETED) == 1
