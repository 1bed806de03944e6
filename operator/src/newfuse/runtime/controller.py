"""The fleet controller: a work queue, and one level-based reconcile per fleet.

kopf delivers watch events (fleets, and the pods the operator owns) into in-memory caches and
queues the fleet's key. Workers take keys and reconcile: read the cached fleet and pods, let the
pure planner decide, apply the difference, then write status (only if it changed). No handler
reacts to status changes, so there is no handler chaining; every decision is re-derived from the
current level of the world, which makes a restart at any point safe.

Beside it, one concern each: caches.py (what the watches showed), effects.py (pods and their
Events), rollouts.py (revision templates and a rollout step's reads, Events and drain),
finalizer.py (fleet deletion), reports.py (agents' reports in Redis), watch.py (queue keys, stale
events). Kubernetes and Redis are reached through ports.py, so tests/unit/test_reconcile.py runs
this reconcile on fakes.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Mapping
from typing import Any

from redis.exceptions import RedisError

from newfuse import logcontext
from newfuse import observability as obs
from newfuse.api.rollout import RolloutState
from newfuse.api.v1alpha1 import (
    FleetMetrics,
    NewFuseAgent,
    NewFuseAgentSpec,
    NewFuseAgentStatus,
    RolloutStrategy,
)
from newfuse.config import OperatorConfig, secret_key_ref
from newfuse.core import naming
from newfuse.core.metrics import (
    AgentReports,
    fleet_state_update,
    fleet_summary,
    fold_agent_states,
    settle_totals,
)
from newfuse.core.planner import plan
from newfuse.core.pods import AgentDefaults, ObservedPod
from newfuse.core.resync import resync_period
from newfuse.core.revision import template_hash
from newfuse.core.rolloutstep import pods_for, revision_to_drain, target_revision
from newfuse.core.status import RedisObservation, StatusInputs, derive_status
from newfuse.fleetgauges import FLEET_GAUGES
from newfuse.runtime.backlog import observe_backlog
from newfuse.runtime.caches import Caches
from newfuse.runtime.effects import (
    announce_budget,
    announce_deadlocks,
    announce_phase,
    apply_plan,
)
from newfuse.runtime.finalizer import Finalizer
from newfuse.runtime.fleet_keys import FleetKeysManager
from newfuse.runtime.ports import KubePort, RedisPort
from newfuse.runtime.redis_routes import RedisRoutes
from newfuse.runtime.redis_users import FleetRedisUsers
from newfuse.runtime.reports import (
    count_dead_letters,
    mirror_budget,
    read_reports,
    retire_legacy,
)
from newfuse.runtime.rollouts import RolloutDriver
from newfuse.runtime.watch import fleet_key, is_older, key_fields, utc_now
from newfuse.runtime.workqueue import WorkQueue
from newfuse.wire.keys import FleetKeys

log = logging.getLogger("newfuse.controller")
# How often the Redis probe loop looks at the circuit while it is closed.
PROBE_POLL_SECONDS = 0.5
Clock = Callable[[], dt.datetime]
Body = Mapping[str, Any]


class Controller:
    """Owns the caches and the queue; `run()` reconciles until cancelled."""

    def __init__(
        self, config: OperatorConfig, kube: KubePort, redis: RedisPort, clock: Clock = utc_now
    ) -> None:
        """Reconcile with ``kube`` and ``redis``; ``clock`` is injectable for tests."""
        self.config, self.clock = config, clock
        self.redis_routes = RedisRoutes(config, kube, redis)  # fleets on other Redis servers
        redis = self.redis_routes.view()
        self.kube, self.redis = kube, redis
        self.queue = WorkQueue()
        self.caches = Caches()
        self.fleets = self.caches.fleets  # what the reconcile reads, by queue key
        self.rollouts = RolloutDriver(kube, redis)
        self._defaults = AgentDefaults(
            redis_url=config.effective_agent_redis_url,
            heartbeat_seconds=config.agent_heartbeat_seconds,
            redis_secret=secret_key_ref(config.agent_redis_secret),
            signing_secret=secret_key_ref(config.agent_signing_secret),
        )
        self._heartbeat_timeout = dt.timedelta(seconds=config.heartbeat_timeout_seconds)
        self.redis_users = FleetRedisUsers(config, kube, redis)
        self.fleet_keys = FleetKeysManager(config, kube, redis)
        self.finalizer = Finalizer(config, kube, redis, self.queue, clock, self.caches.pods_of)

    def observe_fleet(self, event_type: str | None, body: Body) -> None:
        """Cache a fleet and queue it; forget a deleted one and everything kept about it."""
        meta = body["metadata"]
        if event_type != "DELETED":
            if (key := self.caches.put_fleet(body)) is not None:
                self.queue.add(key)
            return
        key = fleet_key(meta["namespace"], meta["name"])
        FLEET_GAUGES.forget(meta["namespace"], meta["name"])
        self.finalizer.forget(meta.get("uid", ""))
        self.caches.drop_fleet(key)
        self.rollouts.forget(key)
        self.caches.refresh_gauges(len(self.queue))

    def observe_pod(self, event_type: str | None, body: Body) -> None:
        """Cache the facts about an owned pod (not its body) and queue its fleet."""
        if (key := self.caches.put_pod(event_type, body)) is not None:
            self.queue.add(key)

    # -- workers --------------------------------------------------------------------------------

    async def run(self) -> None:
        """Run the workers, the periodic resync and the Redis probe until cancelled."""
        self.finalizer.started(self.clock())
        tasks = [
            asyncio.create_task(self._worker(i), name=f"reconcile-worker-{i}")
            for i in range(self.config.workers)
        ]
        tasks.append(asyncio.create_task(self._resync(), name="resync"))
        tasks.append(asyncio.create_task(self._probe_redis(), name="redis-probe"))
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            self.queue.close()

    async def _worker(self, index: int) -> None:
        while True:
            key = await self.queue.get()
            obs.QUEUE_DEPTH.set(len(self.queue))
            started = time.perf_counter()
            try:
                with (
                    logcontext.bound(**key_fields(key)),
                    obs.tracer.start_as_current_span(
                        "reconcile", attributes={"newfuse.fleet": key}
                    ),
                ):
                    await self.reconcile(key)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                delay = self.queue.retry(key)
                obs.RECONCILES.labels("error").inc()
                message = "reconcile of %s failed, retrying in %.1fs: %s"
                log.warning(message, key, delay, exc, extra=key_fields(key))
            else:
                self.queue.forget(key)
                obs.RECONCILES.labels("success").inc()
            finally:
                obs.RECONCILE_SECONDS.observe(time.perf_counter() - started)
                self.queue.done(key)

    async def _resync(self) -> None:
        # Agent metrics and heartbeats change without any watch event: look again periodically,
        # spread over the period so a thousand fleets do not all wake at once.
        config = self.config
        period = config.resync_seconds
        while True:
            await asyncio.sleep(period)
            keys = list(self.fleets)
            period = resync_period(len(keys), config.resync_seconds, config.resync_max_per_second)
            for key in keys:
                jitter = random.uniform(0, period)  # noqa: S311 - jitter, not crypto
                self.queue.add_after(key, jitter, background=True)

    async def _probe_redis(self) -> None:
        # While the Redis circuit is open, reconciles do not call Redis at all; this loop is what
        # finds out that Redis is back, so no reconcile ever waits on a probe's timeout.
        self.redis.breaker.background_probe = True
        # Read at scrape time from the one breaker every Redis call passes: a reply that is an
        # error (one fleet's malformed key) or a reconcile racing a scrape cannot flip it.
        breaker = self.redis.breaker
        obs.REDIS_UP.set_function(lambda: float(breaker.closed))
        try:
            while True:
                await self.redis.probe()
                wait = self.redis.breaker.seconds_to_probe()
                await asyncio.sleep(PROBE_POLL_SECONDS if wait is None else max(0.05, wait))
        finally:
            self.redis.breaker.background_probe = False

    # -- reconcile ------------------------------------------------------------------------------

    async def reconcile(self, key: str) -> None:
        """Bring one fleet's pods, Redis mirror and status in line with its spec."""
        fleet = self.fleets.get(key)
        if fleet is None:
            return
        await self.redis_routes.bind(fleet)
        meta = fleet.metadata
        if meta.deletion_timestamp is not None:
            await self.finalizer.finalize(key, fleet)
            return
        if naming.FINALIZER not in meta.finalizers:
            updated = await self.kube.set_finalizers(
                meta.namespace,
                meta.name,
                [*meta.finalizers, naming.FINALIZER],
                meta.resource_version,
            )
            # Write-through, as for status, and the key comes back at once: at scale the watch can
            # deliver this write minutes late, and a reconcile of the older copy would only try
            # the finalizer again and meet 409 Conflict until then.
            self.observe_fleet("MODIFIED", updated)
            return

        now = self.clock()
        revision = template_hash(fleet.spec)
        with logcontext.bound(revision=revision):
            await self._reconcile_revision(key, fleet, revision, now)

    async def _reconcile_revision(
        self, key: str, fleet: NewFuseAgent, revision: str, now: dt.datetime
    ) -> None:
        observed = self.caches.pods_of(key)
        defaults = await self.redis_users.defaults_for(fleet, self._defaults)
        defaults = await self.fleet_keys.defaults_for(fleet, defaults)
        await self.rollouts.store_revision(key, fleet, revision)
        specs: dict[str, NewFuseAgentSpec] = {revision: fleet.spec}
        rollout: RolloutState | None = None
        target = revision
        # Pods never wait for Redis: only a phased rollout's gate needs the agents' reports to
        # decide the pods, and the Redis circuit (adapters.redis_guard) bounds that read.
        if fleet.spec.rollout.strategy is RolloutStrategy.PHASED:
            reports = await read_reports(self.redis, fleet)
            decision = await self.rollouts.decide(key, fleet, revision, observed, reports, now)
            rollout = decision.state
            for rev in decision.desired:
                if (
                    rev not in specs
                    and (spec := await self.rollouts.spec_of(key, fleet, rev)) is not None
                ):
                    specs[rev] = spec
            decided = pods_for(decision, specs, observed, paused=fleet.spec.paused)
            target = target_revision(rollout, revision)
            await self.rollouts.post_events(fleet, rollout, decision.happened, now)
            if (legacy := revision_to_drain(fleet.status.rollout, decision.happened)) is not None:
                # Stage 3: the legacy agents stop taking tasks now; deleting their pods (SIGTERM)
                # follows in this same reconcile, and both paths drain the same way.
                await self.rollouts.drain(fleet, legacy, now)
            await apply_plan(self.kube, fleet, specs, decided, now, defaults)
        else:
            decided = plan(fleet.spec.replicas, revision, observed, paused=fleet.spec.paused)
            await apply_plan(self.kube, fleet, specs, decided, now, defaults)
            reports = await read_reports(self.redis, fleet)
        backlog = budget = None
        if isinstance(reports, AgentReports):
            budget = await mirror_budget(self.redis, fleet, reports.usage)
            await count_dead_letters(self.redis, fleet)
            backlog = await observe_backlog(
                self.redis, FleetKeys(fleet.metadata.namespace, fleet.metadata.name)
            )
        redis_seen, metrics = await self._mirror(key, fleet, observed, reports, now)
        status = derive_status(
            StatusInputs(
                fleet=fleet,
                update_revision=revision,
                pods=observed,
                plan=decided,
                acted_on_generation=True,
                redis=redis_seen,
                metrics=metrics,
                now=now,
                rollout=rollout,
                target_revision=target,
                backlog=backlog,
                gateway_url=self.config.gateway_url,
                budget=budget,
            )
        )
        if redis_seen.reachable:
            await self._mirror_summary(fleet, status)
        await self._write_status(key, fleet, status, now)

    async def _mirror_summary(self, fleet: NewFuseAgent, status: NewFuseAgentStatus) -> None:
        """Mirror the new status's phase and rollout for the gateway's live feed (best effort)."""
        keys = FleetKeys(fleet.metadata.namespace, fleet.metadata.name)
        try:
            summary = fleet_summary(status, fleet.spec.protocol_version)
            await self.redis.put_fleet_summary(keys, summary)
        except (RedisError, OSError) as exc:  # the next reconcile writes it again
            log.debug("mirroring the summary of %s failed: %s", keys.prefix, exc)

    async def _mirror(
        self,
        key: str,
        fleet: NewFuseAgent,
        observed: list[ObservedPod],
        reports: AgentReports | RedisObservation,
        now: dt.datetime,
    ) -> tuple[RedisObservation, FleetMetrics | None]:
        """Fold agent reports into metrics and mirror the fleet state; Redis errors are returned."""
        if isinstance(reports, RedisObservation):
            return reports, None
        keys = FleetKeys(fleet.metadata.namespace, fleet.metadata.name)
        live = {p.name for p in observed if not p.terminating}
        try:
            await retire_legacy(self.redis, keys, reports, live, {p.revision for p in observed})
            metrics = settle_totals(
                fold_agent_states(reports.all_agents(), live, now, self._heartbeat_timeout),
                await self.redis.task_counters(keys),
                fleet.status.metrics,
            )
            version = self.caches.next_version(key, now)
            ready = any(p.ready for p in observed)
            update = fleet_state_update(
                key, list(fleet.spec.capabilities), metrics, version, now, ready=ready
            )
            await self.redis.put_fleet_state(keys, update)
        except (RedisError, OSError) as exc:
            return RedisObservation(reachable=False, error=f"{type(exc).__name__}: {exc}"), None
        return RedisObservation(reachable=True), metrics

    async def _write_status(
        self, key: str, fleet: NewFuseAgent, status: NewFuseAgentStatus, now: dt.datetime
    ) -> None:
        meta = fleet.metadata
        if status != fleet.status:
            # Explicit nulls: under a merge patch, a field left out would keep its old value.
            body = status.model_dump(mode="json", by_alias=True)
            updated = await self.kube.patch_fleet_status(meta.namespace, meta.name, body)
            # Write-through: a reconcile triggered before the watch delivers this write (a pod
            # event, say) must see the new status, or it would act on a one-shot action twice.
            self.observe_fleet("MODIFIED", updated)
        await announce_phase(self.kube, fleet, status, now)
        await announce_deadlocks(self.kube, fleet, status, now)
        await announce_budget(self.kube, fleet, status, now)
        self.caches.record(key, status)
        self.caches.refresh_gauges(len(self.queue))


__all__ = ["Controller", "fleet_key", "is_older", "key_fields", "utc_now"]
