"""What the watches have shown: parsed fleets and per-pod facts, never raw bodies.

kopf delivers watch events here; the reconcile reads only these caches, so it acts on one
consistent level of the world and never on an event. Our own status writes go through the cache
too (write-through), and an event older than what is cached cannot roll it back. The fleet and
rollout phases kept here feed the gauges.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from newfuse import observability as obs
from newfuse.api.rollout import RolloutPhase
from newfuse.api.v1alpha1 import NewFuseAgent, NewFuseAgentStatus, Phase
from newfuse.core import naming
from newfuse.core.pods import ObservedPod, observe_pod
from newfuse.runtime.watch import fleet_key, is_older, key_fields
from newfuse.wire.state import next_version

log = logging.getLogger("newfuse.controller")
Body = Mapping[str, Any]


class Caches:
    """Fleets and their pods by queue key, plus what the gauges count."""

    def __init__(self) -> None:
        """Empty: the watches' initial listings fill them."""
        self.fleets: dict[str, NewFuseAgent] = {}
        self.pods: dict[str, dict[str, ObservedPod]] = {}
        self.phases: dict[str, str] = {}
        self.rollout_phases: dict[str, str] = {}
        self._versions: dict[str, int] = {}

    def put_fleet(self, body: Body) -> str | None:
        """Cache a fleet; its key if it should be reconciled (None: stale or unparseable)."""
        meta = body["metadata"]
        key = fleet_key(meta["namespace"], meta["name"])
        cached = self.fleets.get(key)
        if cached is not None and is_older(meta, cached):
            # Our own status write already put a newer version in the cache (write-through);
            # an event from before it must not roll the cache back.
            return None
        try:
            self.fleets[key] = NewFuseAgent.model_validate(body)
        except ValidationError as exc:
            # The API server validated it, so this means the CRD and the operator disagree.
            log.error("cannot parse fleet %s: %s", key, exc.errors()[:3], extra=key_fields(key))
            return None
        return key

    def drop_fleet(self, key: str) -> None:
        """Forget a deleted fleet (its pods' own DELETED events drop them)."""
        for cache in (self.fleets, self.phases, self.rollout_phases, self._versions):
            cache.pop(key, None)

    def put_pod(self, event_type: str | None, body: Body) -> str | None:
        """Cache the facts about an owned pod; its fleet's key (None: not one of ours)."""
        meta = body["metadata"]
        fleet = (meta.get("labels") or {}).get(naming.LABEL_FLEET)
        observed = observe_pod(body)
        if not fleet or observed is None:
            return None
        key = fleet_key(meta["namespace"], fleet)
        pods = self.pods.setdefault(key, {})
        if event_type == "DELETED":
            pods.pop(observed.name, None)
            if not pods:
                self.pods.pop(key, None)
        else:
            pods[observed.name] = observed
        return key

    def pods_of(self, key: str) -> list[ObservedPod]:
        """The fleet's cached pods."""
        return list(self.pods.get(key, {}).values())

    def next_version(self, key: str, now: dt.datetime) -> int:
        """The version of the fleet's next state mirrored to Redis (newer than the last)."""
        version = next_version(self._versions.get(key, 0), now)
        self._versions[key] = version
        return version

    def record(self, key: str, status: NewFuseAgentStatus) -> None:
        """Remember the phases a status write set, for the gauges."""
        self.phases[key] = status.phase or ""
        self.rollout_phases[key] = status.rollout.phase if status.rollout is not None else ""

    def refresh_gauges(self, queue_depth: int) -> None:
        """Fleets per phase, pods managed, rollouts per phase, the queue's depth."""
        for phase in Phase:
            obs.FLEETS.labels(phase.value).set(sum(v == phase for v in self.phases.values()))
        obs.PODS_MANAGED.set(sum(len(p) for p in self.pods.values()))
        for rollout_phase in RolloutPhase:
            count = sum(1 for value in self.rollout_phases.values() if value == rollout_phase)
            obs.ROLLOUT_PHASE.labels(rollout_phase.value).set(count)
        obs.QUEUE_DEPTH.set(queue_depth)
