"""What the watches have shown: parsed fleets and per-pod facts, never raw bodies.

kopf delivers watch events here; the reconcile reads only these caches, so it acts on one
consistent level of the world and never on an event. Fleets are kept as compact JSON and parsed on
read (fleetcache.py says why: memory at 10,000 fleets). Our own status and finalizer writes go
through the cache too (write-through), and an event older than what is cached cannot roll it
back. The fleet and rollout phases kept here feed the gauges.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections import Counter
from collections.abc import Mapping
from typing import Any

from pydantic import ValidationError

from newfuse import observability as obs
from newfuse.api.rollout import RolloutPhase
from newfuse.api.v1alpha1 import NewFuseAgentStatus, Phase
from newfuse.core import naming
from newfuse.core.pods import ObservedPod, observe_pod
from newfuse.runtime.fleetcache import FleetCache
from newfuse.runtime.watch import fleet_key, is_older_than, key_fields
from newfuse.wire.state import next_version

log = logging.getLogger("newfuse.controller")
Body = Mapping[str, Any]


class Tally:
    """A value per fleet and how many fleets hold each value, kept together.

    The gauges are refreshed after every reconcile; counting a dict of 10,000 fleets each time
    made the operator's total work grow with the square of the fleet count.
    """

    def __init__(self) -> None:
        """Empty."""
        self._values: dict[str, str] = {}
        self._counts: Counter[str] = Counter()

    def set(self, key: str, value: str) -> None:
        """``key`` now holds ``value``."""
        self.pop(key)
        self._values[key] = value
        self._counts[value] += 1

    def pop(self, key: str) -> None:
        """``key`` holds nothing (no error if it held nothing)."""
        old = self._values.pop(key, None)
        if old is not None:
            self._counts[old] -= 1

    def count(self, value: str) -> int:
        """How many fleets hold ``value``."""
        return self._counts[value]


class Caches:
    """Fleets and their pods by queue key, plus what the gauges count."""

    def __init__(self) -> None:
        """Empty: the watches' initial listings fill them."""
        self.fleets = FleetCache()
        self.pods: dict[str, dict[str, ObservedPod]] = {}
        self.phases = Tally()
        self.rollout_phases = Tally()
        self._pod_count = 0
        self._versions: dict[str, int] = {}

    def put_fleet(self, body: Body) -> str | None:
        """Cache a fleet; its key if it should be reconciled (None: stale or unparseable)."""
        meta = body["metadata"]
        key = fleet_key(meta["namespace"], meta["name"])
        cached = self.fleets.version(key)
        if cached is not None and is_older_than(meta, *cached):
            # Our own status write already put a newer version in the cache (write-through);
            # an event from before it must not roll the cache back.
            return None
        if cached == (meta.get("uid"), meta.get("resourceVersion")):
            # The watch's echo of our own write, already cached and queued by the write-through:
            # the same version is the same object, and reconciling it again would change nothing.
            return None
        try:
            self.fleets.put(key, body)
        except ValidationError as exc:
            # The API server validated it, so this means the CRD and the operator disagree.
            log.error("cannot parse fleet %s: %s", key, exc.errors()[:3], extra=key_fields(key))
            return None
        return key

    def drop_fleet(self, key: str) -> None:
        """Forget a deleted fleet (its pods' own DELETED events drop them)."""
        self.fleets.pop(key)
        self.phases.pop(key)
        self.rollout_phases.pop(key)
        self._versions.pop(key, None)

    def put_pod(self, event_type: str | None, body: Body) -> str | None:
        """Cache the facts about an owned pod; its fleet's key (None: not one of ours)."""
        meta = body["metadata"]
        fleet = (meta.get("labels") or {}).get(naming.LABEL_FLEET)
        observed = observe_pod(body)
        if not fleet or observed is None:
            return None
        key = fleet_key(meta["namespace"], fleet)
        pods = self.pods.setdefault(key, {})
        self._pod_count -= observed.name in pods
        if event_type == "DELETED":
            pods.pop(observed.name, None)
            if not pods:
                self.pods.pop(key, None)
        else:
            pods[observed.name] = observed
            self._pod_count += 1
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
        self.phases.set(key, status.phase or "")
        self.rollout_phases.set(key, status.rollout.phase if status.rollout is not None else "")

    def refresh_gauges(self, queue_depth: int) -> None:
        """Fleets per phase, pods managed, rollouts per phase, the queue's depth."""
        for phase in Phase:
            obs.FLEETS.labels(phase.value).set(self.phases.count(phase))
        obs.PODS_MANAGED.set(self._pod_count)
        for rollout_phase in RolloutPhase:
            obs.ROLLOUT_PHASE.labels(rollout_phase.value).set(
                self.rollout_phases.count(rollout_phase)
            )
        obs.QUEUE_DEPTH.set(queue_depth)
