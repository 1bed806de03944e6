"""In-memory Kubernetes and Redis for driving the controller's reconcile in a unit test.

They implement newfuse.runtime.ports (mypy checks it where the Controller is built) and behave
like the real servers where the reconcile depends on it: a deleted pod is Terminating until the
kubelet lets it go, a finalizer patch with a stale resourceVersion conflicts, and a fleet with a
deletionTimestamp goes once its last finalizer does. Every write is recorded in ``writes``, so a
test can require that a second reconcile at the same level writes nothing.
"""

from __future__ import annotations

import copy
import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from kubernetes.client.exceptions import ApiException
from redis.exceptions import ConnectionError as RedisConnectionError

from newfuse.adapters.redis_guard import Breaker
from newfuse.api.budget import BudgetSpec
from newfuse.api.v1alpha1 import EventType
from newfuse.core import naming
from newfuse.core.backlog import TaskObservation
from newfuse.core.budget import Usage
from newfuse.core.metrics import TaskCounters
from newfuse.wire.golden import GoldenOutput, GoldenRun
from newfuse.wire.keys import FleetKeys
from newfuse.wire.shadow import ShadowCase, ShadowConfig
from newfuse.wire.signing import Signer
from newfuse.wire.state import FleetSummary, StateUpdate

Key = tuple[str, str]


@dataclass(frozen=True)
class Event:
    """A Kubernetes Event the controller posted."""

    name: str
    event_type: EventType
    reason: str
    message: str


class FakeKube:
    """Fleets, pods, ControllerRevisions, Secrets and Events of one API server."""

    def __init__(self) -> None:
        """An empty cluster."""
        self.fleets: dict[Key, dict[str, Any]] = {}
        self.pods: dict[Key, dict[str, Any]] = {}
        self.revisions: dict[tuple[str, str, str], dict[str, Any]] = {}
        self.secrets: dict[Key, dict[str, str]] = {}
        self.config_maps: dict[Key, dict[str, str]] = {}
        self.events: list[Event] = []
        self.writes: list[tuple[str, str]] = []
        self._version = 100

    def _bump(self, obj: dict[str, Any]) -> None:
        self._version += 1
        obj["metadata"]["resourceVersion"] = str(self._version)

    # -- what users and kubelets do -------------------------------------------------------------

    def apply_fleet(self, namespace: str, name: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Create the fleet or replace its spec (a new generation when the spec changes)."""
        body = self.fleets.get((namespace, name))
        if body is None:
            body = {
                "apiVersion": "newfuse.io/v1alpha1",
                "kind": "NewFuseAgent",
                "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{name}",
                             "generation": 1, "finalizers": [], "annotations": {}},
                "spec": spec,
                "status": {},
            }  # fmt: skip
            self.fleets[(namespace, name)] = body
        elif body["spec"] != spec:
            body["spec"] = copy.deepcopy(spec)
            body["metadata"]["generation"] += 1
        self._bump(body)
        return body

    def annotate(self, namespace: str, name: str, key: str, value: str) -> None:
        """Set an annotation on the fleet (`kubectl annotate`)."""
        body = self.fleets[(namespace, name)]
        body["metadata"]["annotations"][key] = value
        self._bump(body)

    def delete_fleet(self, namespace: str, name: str, at: dt.datetime) -> None:
        """`kubectl delete nfa`: a deletionTimestamp, then gone when no finalizer is left."""
        body = self.fleets[(namespace, name)]
        body["metadata"]["deletionTimestamp"] = at.isoformat()
        self._bump(body)

    def kubelet(self, *, ready: bool = True) -> None:
        """Start every pending pod (Ready or not) and let every deleted pod go."""
        for key, body in list(self.pods.items()):
            if body["metadata"].get("deletionTimestamp"):
                del self.pods[key]
            elif body["status"].get("phase") == "Pending":
                body["status"] = {
                    "phase": "Running",
                    "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
                }
                self._bump(body)

    def fail_pod(self, namespace: str, name: str) -> None:
        """The pod's container exited for good (restartPolicy Never, or evicted)."""
        body = self.pods[(namespace, name)]
        body["status"] = {"phase": "Failed", "reason": "Error"}
        self._bump(body)

    def pods_of(self, namespace: str, fleet: str) -> list[dict[str, Any]]:
        """The fleet's pods, Terminating ones included, by name."""
        return sorted(
            (
                p
                for (ns, _), p in self.pods.items()
                if ns == namespace and p["metadata"]["labels"].get(naming.LABEL_FLEET) == fleet
            ),
            key=lambda p: p["metadata"]["name"],
        )

    # -- newfuse.runtime.ports.KubePort ---------------------------------------------------------

    async def create_pod(self, manifest: dict[str, Any]) -> bool:
        """Create a Pending pod; False if the name is taken."""
        meta = manifest["metadata"]
        key = (meta["namespace"], meta["name"])
        if key in self.pods:
            return False
        body = copy.deepcopy(manifest)
        body["status"] = {"phase": "Pending"}
        self._bump(body)
        self.pods[key] = body
        self.writes.append(("create_pod", meta["name"]))
        return True

    async def delete_pod(self, namespace: str, name: str) -> bool:
        """Mark the pod Terminating; False if it is gone."""
        body = self.pods.get((namespace, name))
        if body is None:
            return False
        if not body["metadata"].get("deletionTimestamp"):
            body["metadata"]["deletionTimestamp"] = "2026-11-21T12:00:00Z"
            self._bump(body)
        self.writes.append(("delete_pod", name))
        return True

    async def patch_fleet_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """Replace the status (the controller sends every field, nulls included)."""
        body = self.fleets[(namespace, name)]
        body["status"] = copy.deepcopy(status)
        self._bump(body)
        self.writes.append(("patch_fleet_status", name))
        return copy.deepcopy(body)

    async def set_finalizers(
        self, namespace: str, name: str, finalizers: list[str], resource_version: str
    ) -> dict[str, Any]:
        """Replace the finalizers, or conflict (409) on a stale resourceVersion."""
        body = self.fleets[(namespace, name)]
        if body["metadata"]["resourceVersion"] != resource_version:
            raise ApiException(status=409, reason="Conflict")
        body["metadata"]["finalizers"] = list(finalizers)
        self._bump(body)
        self.writes.append(("set_finalizers", name))
        if body["metadata"].get("deletionTimestamp") and not finalizers:
            del self.fleets[(namespace, name)]
        return copy.deepcopy(body)

    async def ensure_revision(
        self, fleet_meta: Any, revision: str, template: dict[str, Any]
    ) -> None:
        """Keep the template once per revision."""
        key = (fleet_meta.namespace, fleet_meta.name, revision)
        if key not in self.revisions:
            self.revisions[key] = copy.deepcopy(template)
            self.writes.append(("ensure_revision", revision))

    async def read_revision(
        self, namespace: str, fleet: str, revision: str
    ) -> dict[str, Any] | None:
        """A kept template, or None."""
        found = self.revisions.get((namespace, fleet, revision))
        return copy.deepcopy(found) if found is not None else None

    async def ensure_owned_secret(
        self, fleet_meta: Any, name: str, make: Callable[[], dict[str, str]]
    ) -> dict[str, str]:
        """The Secret's data, made once."""
        key = (fleet_meta.namespace, name)
        if key not in self.secrets:
            self.secrets[key] = make()
            self.writes.append(("create_secret", name))
        return dict(self.secrets[key])

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
        """One key of a Secret."""
        return self.secrets.get((namespace, name), {}).get(key)

    async def read_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        """A ConfigMap's data."""
        return self.config_maps.get((namespace, name))

    async def post_event(
        self,
        namespace: str,
        name: str,
        uid: str,
        event_type: EventType,
        reason: str,
        message: str,
        now: dt.datetime,
    ) -> None:
        """Record the Event."""
        self.events.append(Event(name, event_type, str(reason), message))
        self.writes.append(("event", str(reason)))


@dataclass
class FakeRedis:
    """One Redis server's view of the fleets: agents' reports in, mirrored state and drains out."""

    fleet_signers: dict[FleetKeys, Signer] = field(default_factory=dict)
    breaker: Breaker = field(default_factory=lambda: Breaker(5.0))
    down: bool = False
    agents: dict[FleetKeys, list[StateUpdate]] = field(default_factory=dict)
    counts: dict[FleetKeys, dict[str, tuple[int, int, int]]] = field(default_factory=dict)
    fleet_states: dict[FleetKeys, StateUpdate] = field(default_factory=dict)
    summaries: dict[FleetKeys, FleetSummary] = field(default_factory=dict)
    drains: list[tuple[FleetKeys, str]] = field(default_factory=list)
    deleted: list[FleetKeys] = field(default_factory=list)
    keys_left: dict[FleetKeys, int] = field(default_factory=dict)
    acl_users: dict[str, list[str]] = field(default_factory=dict)
    golden_runs: dict[FleetKeys, GoldenRun] = field(default_factory=dict)
    spent: dict[FleetKeys, Usage] = field(default_factory=dict)
    protocol: dict[FleetKeys, dict[int, float]] = field(default_factory=dict)
    shadow_runs: dict[FleetKeys, ShadowConfig] = field(default_factory=dict)
    budgets: dict[FleetKeys, BudgetSpec | None] = field(default_factory=dict)
    golden: dict[FleetKeys, dict[str, GoldenOutput]] = field(default_factory=dict)

    def _reach(self) -> None:
        if self.down:
            raise RedisConnectionError("Connection refused (fake Redis is down)")

    async def probe(self) -> bool:
        """True unless down."""
        return not self.down

    async def agent_states(self, keys: FleetKeys) -> list[StateUpdate]:
        """The agents' registrations."""
        self._reach()
        return list(self.agents.get(keys, []))

    async def revision_counts(self, keys: FleetKeys) -> dict[str, tuple[int, int, int]]:
        """(completed, failed, rejected) per revision."""
        self._reach()
        return dict(self.counts.get(keys, {}))

    async def retired_states(self, keys: FleetKeys) -> list[StateUpdate]:
        """No agent has retired."""
        self._reach()
        return []

    async def retire_agents(self, keys: FleetKeys, retiring: list[StateUpdate]) -> None:
        """Drop the retiring agents' registrations."""
        self._reach()
        self.agents[keys] = [u for u in self.agents.get(keys, []) if u not in retiring]

    async def put_fleet_state(self, keys: FleetKeys, update: StateUpdate) -> bool:
        """Mirror the fleet's state."""
        self._reach()
        self.fleet_states[keys] = update
        self.keys_left[keys] = max(self.keys_left.get(keys, 0), 1)
        return True

    async def put_fleet_summary(self, keys: FleetKeys, summary: FleetSummary) -> None:
        """Keep the fleet's summary."""
        self._reach()
        self.summaries[keys] = summary

    async def task_counters(self, keys: FleetKeys) -> TaskCounters | None:
        """No task has finished."""
        self._reach()
        return None

    async def task_observation(self, keys: FleetKeys) -> TaskObservation:
        """No task stream yet."""
        self._reach()
        return TaskObservation(streams=[], retrying=0, redis_now_ms=0)

    async def dead_letter_count(self, keys: FleetKeys) -> int:
        """Nothing dead-lettered."""
        self._reach()
        return 0

    async def publish_drain(self, keys: FleetKeys, target: str, now: dt.datetime) -> int:
        """Record the drain notice."""
        self._reach()
        self.drains.append((keys, target))
        return 1

    async def publish_shadow(self, keys: FleetKeys, config: ShadowConfig) -> None:
        """Make ``config`` current; a new one starts without copies."""
        self._reach()
        if self.shadow_runs.get(keys) != config:
            self.shadow_runs[keys] = config

    async def shadow_outputs(
        self, keys: FleetKeys
    ) -> tuple[str | None, dict[str, ShadowCase], dict[str, GoldenOutput]]:
        """The current shadow run's id (no copies: agents are not simulated)."""
        self._reach()
        run = self.shadow_runs.get(keys)
        return (run.id if run else None), {}, {}

    async def usage(self, keys: FleetKeys) -> Usage:
        """What the agents spent (set by a test), on day 20000."""
        self._reach()
        return self.spent.get(keys, Usage(20000))

    async def protocol_seen(self, keys: FleetKeys) -> dict[int, float]:
        """Major -> seconds since last seen (set by a test in `protocol`)."""
        self._reach()
        return dict(self.protocol.get(keys, {}))

    async def put_budget(self, keys: FleetKeys, budget: BudgetSpec | None) -> None:
        """Keep the mirrored budget."""
        self._reach()
        self.budgets[keys] = budget

    async def publish_golden(self, keys: FleetKeys, run: GoldenRun) -> None:
        """Make ``run`` current; a new one starts without outputs."""
        self._reach()
        if self.golden_runs.get(keys) != run:
            self.golden_runs[keys] = run
            self.golden.pop(keys, None)

    async def golden_outputs(self, keys: FleetKeys) -> tuple[str | None, dict[str, GoldenOutput]]:
        """The current run's id and what agents recorded for it."""
        self._reach()
        run = self.golden_runs.get(keys)
        return (run.id if run else None), dict(self.golden.get(keys, {}))

    async def set_acl_user(self, user: str, rules: list[str]) -> None:
        """Keep the user's rules."""
        self._reach()
        self.acl_users[user] = list(rules)

    async def delete_acl_user(self, user: str) -> None:
        """Drop the user."""
        self._reach()
        self.acl_users.pop(user, None)

    async def delete_fleet(self, keys: FleetKeys) -> int:
        """Remove the fleet's keys; how many there were."""
        self._reach()
        self.deleted.append(keys)
        return self.keys_left.pop(keys, 0)
