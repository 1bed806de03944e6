"""The fleet finalizer's I/O: delete the pods, remove the Redis keys, and always let the fleet go.

newfuse.core.cleanup decides each step; this module does it and says what happens in Events and
logs, so that `kubectl describe nfa` on a fleet stuck in deletion tells its owner why and how to
skip the wait. Progress (when the keys were last removed) is kept in memory: after a restart the
finalizer removes the keys once more and settles again, which is only slower.
"""

from __future__ import annotations

import datetime as dt
import logging
from collections.abc import Callable, Collection
from dataclasses import dataclass

from redis.exceptions import RedisError

from newfuse.api.v1alpha1 import EventType, NewFuseAgent, Reason
from newfuse.config import OperatorConfig
from newfuse.core import acl, naming
from newfuse.core.cleanup import (
    CleanupFacts,
    Step,
    cleanup_deadline,
    next_step,
    released_after_removal,
    skip_requested,
)
from newfuse.core.pods import ObservedPod
from newfuse.runtime.ports import KubePort, RedisPort
from newfuse.runtime.workqueue import WorkQueue
from newfuse.wire.keys import FleetKeys

log = logging.getLogger("newfuse.finalizer")
TIMEOUT_SETTING = "NEWFUSE_REDIS_CLEANUP_TIMEOUT_SECONDS"
# How often a failed cleanup is tried again (never past the deadline).
RETRY_SECONDS = 2.0
# The settle period is one agent heartbeat period plus this margin, and at least MIN_SETTLE.
SETTLE_MARGIN_SECONDS = 1.0
MIN_SETTLE_SECONDS = 2.0


@dataclass
class _Progress:
    removed_at: dt.datetime | None = None
    removed: int = 0
    warned: bool = False


class Finalizer:
    """Runs the finalizer of deleted fleets; one per controller."""

    def __init__(
        self,
        config: OperatorConfig,
        kube: KubePort,
        redis: RedisPort,
        queue: WorkQueue,
        clock: Callable[[], dt.datetime],
        pods_of: Callable[[str], Collection[ObservedPod]],
    ) -> None:
        """Act through ``kube`` and ``redis``; ``pods_of(key)`` is the fleet's cached pods."""
        self.kube, self.redis, self.queue = kube, redis, queue
        self.clock, self.pods_of = clock, pods_of
        self.timeout = dt.timedelta(seconds=config.redis_cleanup_timeout_seconds)
        self.settle = dt.timedelta(
            seconds=max(MIN_SETTLE_SECONDS, config.agent_heartbeat_seconds + SETTLE_MARGIN_SECONDS)
        )
        self.since = clock()
        self._progress: dict[str, _Progress] = {}
        self.manage_redis_users = config.manage_redis_users

    def started(self, now: dt.datetime) -> None:
        """Deadlines count from ``now`` at the earliest (the controller starts reconciling)."""
        self.since = now

    def forget(self, uid: str) -> None:
        """Drop a gone fleet's progress."""
        self._progress.pop(uid, None)

    async def finalize(self, key: str, fleet: NewFuseAgent) -> None:
        """Take one step of a deleted fleet's cleanup; requeue ``key`` when a later one is due."""
        meta = fleet.metadata
        if naming.FINALIZER not in meta.finalizers:
            return
        now = self.clock()
        pods = list(self.pods_of(key))
        progress = self._progress.setdefault(meta.uid, _Progress())
        deadline = cleanup_deadline(meta.deletion_timestamp, self.since, self.timeout)
        step = next_step(
            CleanupFacts(
                skip_requested=skip_requested(meta.annotations),
                pods_undeleted=sum(1 for p in pods if not p.terminating),
                pods_left=len(pods),
                now=now,
                deadline=deadline,
                removed_at=progress.removed_at,
                settle=self.settle,
            )
        )
        keys = FleetKeys(meta.namespace, meta.name)
        if step is Step.SKIP:
            self._log_leftovers(keys, "the skip annotation is set")
            await self._release(
                fleet,
                EventType.WARNING,
                Reason.REDIS_CLEANUP_SKIPPED,
                f"{naming.SKIP_REDIS_CLEANUP_ANNOTATION}=true: deleting the fleet without removing "
                f"its Redis keys ({keys.prefix}:*, listed in the operator log)",
            )
        elif step is Step.GIVE_UP:
            await self._give_up(fleet, keys, progress, len(pods))
        elif step is Step.DELETE_PODS:
            for pod in pods:
                if not pod.terminating and await self.kube.delete_pod(meta.namespace, pod.name):
                    log.info("deleted pod %s of deleted fleet %s", pod.name, key)
            self._retry_by(key, now, deadline)  # pod events bring the fleet back sooner
        elif step is Step.WAIT_FOR_PODS:
            self._retry_by(key, now, deadline)
        elif step is Step.SETTLE:
            assert progress.removed_at is not None
            self.queue.add_after(key, (progress.removed_at + self.settle - now).total_seconds())
        else:
            await self._remove_keys(key, fleet, keys, progress, now, deadline)

    async def _remove_keys(
        self,
        key: str,
        fleet: NewFuseAgent,
        keys: FleetKeys,
        progress: _Progress,
        now: dt.datetime,
        deadline: dt.datetime,
    ) -> None:
        try:
            removed = await self.redis.delete_fleet(keys)
            if self.manage_redis_users:  # its user goes too (its Secret goes with the fleet)
                await self.redis.delete_acl_user(acl.user_name(keys))
        except (RedisError, OSError) as exc:
            await self._waiting(fleet, progress, f"{type(exc).__name__}: {exc}", deadline)
            self._retry_by(key, now, deadline)
            return
        if released_after_removal(progress.removed_at, removed):
            await self._release(
                fleet,
                EventType.NORMAL,
                Reason.REDIS_KEYS_REMOVED,
                f"removed {progress.removed} Redis key(s) of the fleet",
            )
            return
        if progress.removed_at is not None:
            log.info(
                "%d key(s) of deleted fleet %s came back (an agent still running?): removed again",
                removed,
                key,
            )
        progress.removed_at, progress.removed = now, progress.removed + removed
        self.queue.add_after(key, self.settle.total_seconds())

    async def _give_up(
        self, fleet: NewFuseAgent, keys: FleetKeys, progress: _Progress, pods_left: int
    ) -> None:
        seconds = self.timeout.total_seconds()
        try:
            removed = await self.redis.delete_fleet(keys)
        except (RedisError, OSError) as exc:
            self._log_leftovers(keys, f"Redis was unreachable for {seconds:g}s: {exc}")
            message = (
                f"gave up after {seconds:g}s ({TIMEOUT_SETTING}): cannot reach Redis "
                f"({type(exc).__name__}); deleting the fleet and leaving its Redis keys "
                f"({keys.prefix}:*, listed in the operator log)"
            )
        else:
            message = (
                f"gave up waiting {seconds:g}s ({TIMEOUT_SETTING}) for {pods_left} pod(s) to go; "
                f"removed {progress.removed + removed} Redis key(s), which agents still running "
                "may write again"
            )
        await self._release(fleet, EventType.WARNING, Reason.REDIS_CLEANUP_SKIPPED, message)

    async def _waiting(
        self, fleet: NewFuseAgent, progress: _Progress, error: str, deadline: dt.datetime
    ) -> None:
        """Say once per deletion what the finalizer waits for and how to skip the wait."""
        if progress.warned:
            return
        progress.warned = True
        meta = fleet.metadata
        await self.kube.post_event(
            meta.namespace,
            meta.name,
            meta.uid,
            EventType.WARNING,
            Reason.REDIS_CLEANUP_WAITING,
            f"cannot reach Redis to remove the fleet's keys ({error}). Retrying until "
            f"{deadline.isoformat()} ({TIMEOUT_SETTING}={self.timeout.total_seconds():g}); then "
            "the fleet is deleted and its keys stay in Redis. To delete it now without the "
            f"cleanup: kubectl annotate nfa {meta.name} -n {meta.namespace} "
            f"{naming.SKIP_REDIS_CLEANUP_ANNOTATION}=true",
            self.clock(),
        )

    def _retry_by(self, key: str, now: dt.datetime, deadline: dt.datetime) -> None:
        # The clock has whole seconds: wake just after the deadline, not just before it.
        remaining = (deadline - now).total_seconds() + 1.0
        self.queue.add_after(key, max(0.1, min(RETRY_SECONDS, remaining)))

    @staticmethod
    def _log_leftovers(keys: FleetKeys, why: str) -> None:
        log.warning(
            "fleet %s/%s deleted without removing its Redis keys (%s); remove them with "
            "UNLINK when Redis is back: %s",
            keys.namespace,
            keys.fleet,
            why,
            " ".join(keys.all_keys()),
            extra={"namespace": keys.namespace, "fleet": keys.fleet},
        )

    async def _release(
        self, fleet: NewFuseAgent, kind: EventType, reason: Reason, message: str
    ) -> None:
        meta = fleet.metadata
        await self.kube.post_event(
            meta.namespace, meta.name, meta.uid, kind, reason, message, self.clock()
        )
        remaining = [f for f in meta.finalizers if f != naming.FINALIZER]
        await self.kube.set_finalizers(meta.namespace, meta.name, remaining, meta.resource_version)
        self.forget(meta.uid)
