"""What the controller needs from Kubernetes and Redis, as Protocols a fake can implement.

newfuse.adapters.kube.KubeClient and newfuse.adapters.redis_store.RedisStore are the real ones;
tests/fakes.py holds in-memory ones, so a whole reconcile runs in a unit test
(tests/unit/test_reconcile.py). Errors are part of the contract: Kubernetes calls raise
kubernetes' ApiException, Redis calls RedisError or OSError when Redis cannot be reached.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from typing import Any, Protocol

from newfuse.api.budget import BudgetSpec
from newfuse.api.v1alpha1 import EventType
from newfuse.core.backlog import TaskObservation
from newfuse.core.budget import Usage
from newfuse.core.metrics import TaskCounters
from newfuse.wire.golden import GoldenOutput, GoldenRun
from newfuse.wire.keys import FleetKeys
from newfuse.wire.shadow import ShadowCase, ShadowConfig
from newfuse.wire.signing import Signer
from newfuse.wire.state import FleetSummary, StateUpdate


class KubePort(Protocol):
    """Pods, the fleet's status and finalizers, revision templates, Secrets and Events."""

    async def create_pod(self, manifest: dict[str, Any]) -> bool:
        """Create a pod; False if it already exists."""

    async def delete_pod(self, namespace: str, name: str) -> bool:
        """Delete a pod; False if it is already gone."""

    async def patch_fleet_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> dict[str, Any]:
        """Merge-patch the status subresource; returns the updated fleet."""

    async def set_finalizers(
        self, namespace: str, name: str, finalizers: list[str], resource_version: str
    ) -> dict[str, Any]:
        """Replace the fleet's finalizers (a conflict if it changed since resource_version).

        Returns the fleet as written.
        """

    async def ensure_revision(
        self, fleet_meta: Any, revision: str, template: dict[str, Any]
    ) -> None:
        """Keep a revision's pod template (a ControllerRevision owned by the fleet)."""

    async def read_revision(
        self, namespace: str, fleet: str, revision: str
    ) -> dict[str, Any] | None:
        """A stored revision's template, or None if there is none."""

    async def ensure_owned_secret(
        self, fleet_meta: Any, name: str, make: Callable[[], dict[str, str]]
    ) -> dict[str, str]:
        """The data of a Secret the fleet owns, created from ``make()`` if missing."""

    async def read_secret_key(self, namespace: str, name: str, key: str) -> str | None:
        """One key of a Secret, or None if the Secret or key is missing."""

    async def read_config_map(self, namespace: str, name: str) -> dict[str, str] | None:
        """A ConfigMap's data, or None if there is no such ConfigMap."""

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
        """Record a Kubernetes Event about the fleet."""


class BreakerPort(Protocol):
    """The Redis circuit: whether calls go through, and when to probe again."""

    background_probe: bool

    @property
    def closed(self) -> bool:
        """True while Redis is believed reachable."""

    def seconds_to_probe(self) -> float | None:
        """Seconds until the next probe of an open circuit; None while it is closed."""


class RedisPort(Protocol):
    """The agents' reports, the fleet's mirrored state, its backlog, drains, ACL users, cleanup."""

    fleet_signers: dict[FleetKeys, Signer]

    @property
    def breaker(self) -> BreakerPort:
        """The circuit every call passes."""

    async def probe(self) -> bool:
        """Ping Redis if the open circuit's probe is due; True if Redis is reachable."""

    async def agent_states(self, keys: FleetKeys) -> list[StateUpdate]:
        """The agents' registrations (malformed ones skipped)."""

    async def revision_counts(self, keys: FleetKeys) -> dict[str, tuple[int, int, int]]:
        """(completed, failed, rejected) tasks per revision."""

    async def retired_states(self, keys: FleetKeys) -> list[StateUpdate]:
        """Final registrations of retired agents."""

    async def retire_agents(self, keys: FleetKeys, retiring: list[StateUpdate]) -> None:
        """Move agents' registrations to the retired hash."""

    async def put_fleet_state(self, keys: FleetKeys, update: StateUpdate) -> bool:
        """Mirror the fleet's state (versioned: an older version never wins)."""

    async def put_fleet_summary(self, keys: FleetKeys, summary: FleetSummary) -> None:
        """Mirror what the fleet's status says (phase, rollout) for the gateway's live feed."""

    async def task_counters(self, keys: FleetKeys) -> TaskCounters | None:
        """The fleet's task counters, or None if it has none."""

    async def task_observation(self, keys: FleetKeys) -> TaskObservation:
        """The raw backlog reads per priority."""

    async def dead_letter_count(self, keys: FleetKeys) -> int:
        """Entries in the dead-letter stream."""

    async def publish_drain(self, keys: FleetKeys, target: str, now: dt.datetime) -> int:
        """Tell the agents ``target`` names to stop taking tasks."""

    async def publish_shadow(self, keys: FleetKeys, config: ShadowConfig) -> None:
        """Make ``config`` the fleet's shadow run (its copies start empty if it is a new one)."""

    async def shadow_outputs(
        self, keys: FleetKeys
    ) -> tuple[str | None, dict[str, ShadowCase], dict[str, GoldenOutput]]:
        """The current shadow run's id, its copies by task id, and the canary's answers."""

    async def usage(self, keys: FleetKeys) -> Usage:
        """Tokens and cost per revision and today (by Redis' clock), as the agents counted."""

    async def protocol_seen(self, keys: FleetKeys) -> dict[int, float]:
        """Protocol major -> seconds since a task of it was last submitted or taken."""

    async def put_budget(self, keys: FleetKeys, budget: BudgetSpec | None) -> None:
        """Mirror spec.budget's hard limits for the submission scripts (none: remove them)."""

    async def publish_golden(self, keys: FleetKeys, run: GoldenRun) -> None:
        """Make ``run`` the fleet's golden run (its outputs start empty if it is a new one)."""

    async def golden_outputs(self, keys: FleetKeys) -> tuple[str | None, dict[str, GoldenOutput]]:
        """The current golden run's id and its outputs by "<revision>/<case>"."""

    async def set_acl_user(self, user: str, rules: list[str]) -> None:
        """Create or update a Redis ACL user."""

    async def delete_acl_user(self, user: str) -> None:
        """Remove a Redis ACL user."""

    async def delete_fleet(self, keys: FleetKeys) -> int:
        """Remove every key of the fleet; the number removed."""
