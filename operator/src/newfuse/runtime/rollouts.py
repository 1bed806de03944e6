"""The rollout's I/O for the controller: revision templates, the phased decision, its Events.

Every revision's template is kept as a ControllerRevision, so pods of an older revision can be
rebuilt during and after a rollout; the decision itself is newfuse.core.rollout's. Events, audit
lines and the drain of a retired legacy revision are posted here.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from redis.exceptions import RedisError

from newfuse import observability as obs
from newfuse.adapters.kube import KubeClient
from newfuse.adapters.redis_store import RedisStore
from newfuse.api.rollout import TERMINAL_PHASES, HistoryEntry, RolloutReason, RolloutState
from newfuse.api.v1alpha1 import EventType, NewFuseAgent, NewFuseAgentSpec
from newfuse.core import naming
from newfuse.core.audit import audit_record
from newfuse.core.metrics import AgentReports
from newfuse.core.pods import ObservedPod
from newfuse.core.revision import spec_with_template, template_of
from newfuse.core.rollout import (
    ENDING_ROLLOUT_REASONS,
    WARNING_ROLLOUT_REASONS,
    Decision,
    Observation,
    decide,
    parse_action,
    revision_stats,
    rollout_started_at,
)
from newfuse.core.status import RedisObservation
from newfuse.runtime.watch import key_fields
from newfuse.wire.keys import FleetKeys

log = logging.getLogger("newfuse.controller")


class RolloutDriver:
    """Revision templates (cached) and the phased rollout's reads and writes."""

    def __init__(self, kube: KubeClient, redis: RedisStore) -> None:
        """Act through ``kube`` and ``redis``."""
        self.kube, self.redis = kube, redis
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

    async def _drain_revision(self, fleet: NewFuseAgent, revision: str, now: dt.datetime) -> None:
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
        state = fleet.status.rollout
        action = fleet.metadata.annotations.get(naming.ROLLOUT_ACTION_ANNOTATION)
        controls = parse_action(action, state.last_action if state else None)
        active = state is not None and state.phase not in TERMINAL_PHASES
        stable = (state.stable_revision if state is not None and active else None) or (
            fleet.status.current_revision or revision
        )
        capabilities = {revision: frozenset(fleet.spec.capabilities)}
        if (
            stable != revision
            and (stable_spec := await self.spec_of(key, fleet, stable)) is not None
        ):
            capabilities[stable] = frozenset(stable_spec.capabilities)
        ready: dict[str, int] = {}
        for pod in observed:
            if pod.ready:
                ready[pod.revision] = ready.get(pod.revision, 0) + 1
        stats = {}
        if isinstance(reports, AgentReports):
            stats = revision_stats(reports.counts, reports.p95_by_revision())
        observation = Observation(
            replicas=fleet.spec.replicas,
            update_revision=revision,
            current_revision=fleet.status.current_revision,
            ready=ready,
            capabilities=capabilities,
            stats=stats,
            controls=controls,
        )
        decision = decide(fleet.spec.rollout, observation, state, now)
        if decision.state is not None and action and decision.state.last_action != action:
            # Whatever the annotation says has now been acted on (or was stale): never again.
            decision = Decision(
                decision.state.model_copy(update={"last_action": action}),
                decision.desired,
                decision.happened,
            )
        return decision

    async def post_events(
        self,
        fleet: NewFuseAgent,
        state: RolloutState | None,
        happened: tuple[HistoryEntry, ...],
        now: dt.datetime,
    ) -> None:
        started = rollout_started_at(state)
        previous = fleet.status.rollout
        legacy = previous.stable_revision if previous is not None else None
        meta = fleet.metadata
        for entry in happened:
            if entry.reason in ENDING_ROLLOUT_REASONS and started is not None:
                obs.ROLLOUT_SECONDS.labels(entry.reason).observe(
                    (entry.at - started).total_seconds()
                )
            if entry.reason is RolloutReason.COMPLETED and legacy is not None:
                # Phase 3: tell the legacy agents to stop taking tasks now; deleting their pods
                # (SIGTERM) follows in this same reconcile, and both paths drain the same way.
                await self._drain_revision(fleet, legacy, now)
            record = audit_record(entry.reason, meta.annotations, meta.namespace, meta.name)
            if record is not None:
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
            warning = entry.reason in WARNING_ROLLOUT_REASONS
            if entry.verdict is not None:
                obs.GATE_VERDICTS.labels(entry.verdict.result).inc()
            await self.kube.post_event(
                meta.namespace,
                meta.name,
                meta.uid,
                EventType.WARNING if warning else EventType.NORMAL,
                entry.reason,
                f"{entry.stage} step {entry.step} ({entry.canary_agents} canary): {entry.message}",
                now,
            )
