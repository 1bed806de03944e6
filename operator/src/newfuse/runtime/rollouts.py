"""Where a rollout step is applied: revision templates, the step's reads, its Events and drain.

Every revision's template is kept as a ControllerRevision, so pods of an older revision can be
rebuilt during and after a rollout. The step itself is decided in newfuse.core.rollout (from an
Observation newfuse.core.rolloutstep builds); here are only its reads and writes: the stable
template, Events, audit lines, and the drain of a legacy revision the step retired.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from redis.exceptions import RedisError

from newfuse import observability as obs
from newfuse.api.rollout import TERMINAL_PHASES, HistoryEntry, RolloutState
from newfuse.api.v1alpha1 import NewFuseAgent, NewFuseAgentSpec
from newfuse.core.audit import audit_record
from newfuse.core.metrics import AgentReports
from newfuse.core.pods import ObservedPod
from newfuse.core.protocol import ProtocolObservation
from newfuse.core.revision import spec_with_template, template_of
from newfuse.core.rollout import Decision
from newfuse.core.rolloutstep import (
    ENDING_ROLLOUT_REASONS,
    event_of,
    rollout_started_at,
    stable_revision,
    step,
)
from newfuse.core.status import RedisObservation
from newfuse.runtime.golden import GoldenDriver, ShadowDriver
from newfuse.runtime.ports import KubePort, RedisPort
from newfuse.runtime.watch import key_fields
from newfuse.wire.keys import FleetKeys

log = logging.getLogger("newfuse.controller")


class RolloutDriver:
    """Revision templates (cached) and the phased rollout's reads and writes."""

    def __init__(self, kube: KubePort, redis: RedisPort) -> None:
        """Act through ``kube`` and ``redis``."""
        self.kube, self.redis = kube, redis
        self.golden = GoldenDriver(kube, redis)
        self.shadow = ShadowDriver(redis)
        self._stored: dict[str, set[str]] = {}
        self._templates: dict[tuple[str, str], dict[str, Any]] = {}

    def forget(self, key: str) -> None:
        """Drop a deleted fleet's cached revisions."""
        self._stored.pop(key, None)
        for cached in [k for k in self._templates if k[0] == key]:
            del self._templates[cached]

    async def store_revision(self, key: str, fleet: NewFuseAgent, revision: str) -> None:
        """Keep every revision's template (a ControllerRevision), to rebuild its pods later."""
        stored = self._stored.setdefault(key, set())
        if revision not in stored:
            await self.kube.ensure_revision(fleet.metadata, revision, template_of(fleet.spec))
            stored.add(revision)

    async def spec_of(
        self, key: str, fleet: NewFuseAgent, revision: str
    ) -> NewFuseAgentSpec | None:
        """The spec a stored revision's pods are built from (the current spec, other template)."""
        template = self._templates.get((key, revision))
        if template is None:
            template = await self.kube.read_revision(
                fleet.metadata.namespace, fleet.metadata.name, revision
            )
            if template is None:
                log.warning(
                    "no stored template for revision %s of %s", revision, key, extra=key_fields(key)
                )
                return None
            self._templates[(key, revision)] = template
        return spec_with_template(fleet.spec, template)

    async def drain(self, fleet: NewFuseAgent, revision: str, now: dt.datetime) -> None:
        """Tell a retired revision's agents to stop taking tasks (stage 3's decommission)."""
        keys = FleetKeys(fleet.metadata.namespace, fleet.metadata.name)
        try:
            await self.redis.publish_drain(keys, f"revision:{revision}", now)
        except (RedisError, OSError) as exc:
            log.warning("could not publish drain for %s: %s", revision, exc)

    async def decide(
        self,
        key: str,
        fleet: NewFuseAgent,
        revision: str,
        observed: list[ObservedPod],
        reports: AgentReports | RedisObservation,
        now: dt.datetime,
    ) -> Decision:
        """The rollout step (newfuse.core.rolloutstep), with the stable template read first."""
        stable = stable_revision(fleet, revision)
        capabilities = None
        if stable != revision and (spec := await self.spec_of(key, fleet, stable)) is not None:
            capabilities = frozenset(spec.capabilities)
        analysis = (await self.golden.observe(fleet), await self.shadow.observe(fleet))
        protocol = await self.protocol_of(fleet)
        return step(fleet, revision, observed, reports, capabilities, now, analysis, protocol)

    async def protocol_of(self, fleet: NewFuseAgent) -> ProtocolObservation | None:
        """The protocol majors traffic used, while a rollout may need them (else None)."""
        state = fleet.status.rollout
        if state is None or state.phase in TERMINAL_PHASES:
            return None
        keys = FleetKeys(fleet.metadata.namespace, fleet.metadata.name)
        backlog = fleet.status.backlog
        waiting = backlog.oldest_waiting_seconds if backlog is not None else None
        try:
            seen = await self.redis.protocol_seen(keys)
        except (RedisError, OSError) as exc:
            return ProtocolObservation(problem=f"Redis unreachable: {exc}")
        for major, age in seen.items():
            obs.PROTOCOL_SEEN.set(keys.namespace, keys.fleet, age, str(major))
        return ProtocolObservation(seen=seen, oldest_waiting_seconds=waiting)

    async def post_events(
        self,
        fleet: NewFuseAgent,
        state: RolloutState | None,
        happened: tuple[HistoryEntry, ...],
        now: dt.datetime,
    ) -> None:
        """An Event, a metric and (for user actions) an audit line per history entry."""
        started = rollout_started_at(state)
        meta = fleet.metadata
        for entry in happened:
            if entry.reason in ENDING_ROLLOUT_REASONS and started is not None:
                obs.ROLLOUT_SECONDS.labels(entry.reason).observe(
                    (entry.at - started).total_seconds()
                )
            self._audit(fleet, entry, now)
            if entry.verdict is not None:
                obs.GATE_VERDICTS.labels(entry.verdict.result).inc()
            kind, message = event_of(entry)
            await self.kube.post_event(
                meta.namespace, meta.name, meta.uid, kind, entry.reason, message, now
            )

    @staticmethod
    def _audit(fleet: NewFuseAgent, entry: HistoryEntry, now: dt.datetime) -> None:
        meta = fleet.metadata
        record = audit_record(entry.reason, meta.annotations, meta.namespace, meta.name)
        if record is None:
            return
        log.info(
            "audit: %s of %s/%s by %s",
            record.action,
            record.namespace,
            record.fleet,
            record.by,
            extra={
                "audit": True,
                "action": record.action,
                "by": record.by,
                "requested_at": record.requested_at,
                "done_at": now.isoformat(),
                "namespace": record.namespace,
                "fleet": record.fleet,
                "stage": entry.stage,
                "step": entry.step,
            },
        )
