"""The agent: takes tasks from its fleet's streams, runs handlers, stores results, reports state.

Delivery is at-least-once and results are exactly-once: a task is acknowledged only in the same
atomic step that stores its first result (COMPLETE_LUA), so a crash before that step leaves the
task pending for another agent to reclaim, and a crash after it cannot produce a second result.
What one delivery goes through is newfuse_agent.process; this module runs the loops around it:
- consume: new entries, higher priorities first, up to `concurrency` at once;
- maintain: renew the claims on in-flight work (its liveness: a task may run for as long as its
  timeout, and is only taken over if this process stops renewing), reclaim dead consumers'
  entries, move due retries back onto the streams, and expire results past their retention;
- heartbeat: the agent's versioned state in Redis;
- coordination: drain, reload and ping notices (pub/sub, newfuse_agent.notices).

On SIGTERM (or a `drain` on the coordination channel) the agent stops taking tasks, lets in-flight
ones finish within the grace period, hands the rest back to the stream, marks itself inactive and
leaves the consumer group.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as aioredis
from redis.exceptions import RedisError

from newfuse import logcontext
from newfuse.adapters.state_store import put_state
from newfuse.wire.keys import FleetKeys
from newfuse.wire.state import AgentMetrics, AgentState, AgentStatus, StateUpdate, next_version
from newfuse_agent import metrics
from newfuse_agent.config import AgentConfig
from newfuse_agent.contract import Handler, TaskContext
from newfuse_agent.golden import GoldenRunner
from newfuse_agent.metrics import TaskOutcome
from newfuse_agent.notices import Notices
from newfuse_agent.outcomes import Stats, task_id_of
from newfuse_agent.process import Processor
from newfuse_agent.queue import Delivery, TaskQueue, utc_now

log = logging.getLogger("newfuse_agent")
Clock = Callable[[], dt.datetime]
MAINTENANCE_TICK_SECONDS = 1.0
# How often every agent looks at its fleet's delegation waits (lost resumptions, stalled waits,
# deadlocks): a deadlock is broken within this many ticks of its cycle closing, plus one.
WAIT_SWEEP_TICKS = 2


class Agent:
    """One agent process."""

    def __init__(
        self,
        config: AgentConfig,
        client: aioredis.Redis,
        handlers: Mapping[str, Handler],
        context: TaskContext,
        clock: Clock = utc_now,
    ) -> None:
        """Run ``handlers`` for the fleet in ``config``, talking to Redis through ``client``."""
        self.config, self.client, self.handlers, self.clock = config, client, handlers, clock
        self.keys = FleetKeys(config.namespace, config.fleet)
        self.queue = TaskQueue(client, self.keys, config.consumer, config.tasks)
        self.stats = Stats()
        self.processor = Processor(
            config, self.queue, handlers, context, clock, self.stats, self._inject_fault
        )
        self._signing = config.signing
        self.golden = GoldenRunner(config, client, handlers, context)
        self._inflight: dict[asyncio.Task[None], Delivery] = {}
        self._slots = self.queue.slot_freed  # set when a delivery ends or starts its result step
        self._draining = asyncio.Event()
        self.ready = False
        self.status = AgentStatus.ACTIVE
        self._version = 0
        self._fault_credit = 0.0
        self.notices = Notices(config, self.queue, clock, self.request_drain, self._pong)

    # -- lifecycle ------------------------------------------------------------------------------

    def request_drain(self) -> None:
        """Begin draining (idempotent); `run()` returns once done."""
        if not self._draining.is_set():
            log.info("drain requested", extra={"agent": self.config.agent_id})
        self._draining.set()

    async def run(self) -> None:
        """Work until drained."""
        await self._until_redis(self.queue.ensure_groups)
        await self._until_redis(self._heartbeat_once)
        self.ready = True
        loops = [
            asyncio.create_task(self._consume(), name="consume"),
            asyncio.create_task(self._maintain(), name="maintain"),
            asyncio.create_task(self.notices.listen(self._draining), name="coordination"),
            asyncio.create_task(self.golden.loop(), name="golden"),
        ]
        heartbeat = asyncio.create_task(self._heartbeats(), name="heartbeat")
        renewals = asyncio.create_task(self._renewals(), name="renew")
        await self._draining.wait()
        metrics.DRAINING.set(1)
        self.ready = False
        # Inactive from the moment it stops taking tasks: even if the drain is cut short by
        # SIGKILL, the fleet's state already says this agent is going.
        self.status = AgentStatus.INACTIVE
        with contextlib.suppress(RedisError, OSError):
            await asyncio.wait_for(self._heartbeat_once(), 5)
        for task in loops:
            task.cancel()
        await asyncio.wait(loops, timeout=5)  # a loop stuck in a library call: not past grace
        await self._drain_inflight()  # claims are still renewed meanwhile
        for task in (heartbeat, renewals):
            task.cancel()
        await asyncio.gather(heartbeat, renewals, return_exceptions=True)
        with contextlib.suppress(RedisError, OSError):
            await self._heartbeat_once()
            if await self.queue.pending_count() == 0:
                await self.queue.leave()
        log.info("drained", extra={"agent": self.config.agent_id})

    async def _until_redis(self, step: Callable[[], Any]) -> None:
        delay = 0.2
        while not self._draining.is_set():
            try:
                await step()
            except (RedisError, OSError) as exc:
                metrics.REDIS_UP.set(0)
                log.warning("redis unavailable (%s), retrying in %.1fs", exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)
            else:
                metrics.REDIS_UP.set(1)
                return

    # -- the loops ------------------------------------------------------------------------------

    async def _consume(self) -> None:
        backoff = 0.2
        # Each loop also stops on `_draining`, not only on cancellation: redis-py turns a
        # cancellation that lands mid-read into a connection error, which an outage handler would
        # otherwise swallow and retry forever (a drain that never finishes).
        while not self._draining.is_set():
            free = self._room()
            if free <= 0:
                self._slots.clear()
                await self._slots.wait()
                continue
            try:
                deliveries = await self.queue.fetch(free, block_ms=1000)
            except (RedisError, OSError) as exc:
                if self._draining.is_set():
                    return
                metrics.REDIS_UP.set(0)
                log.warning("fetching tasks failed (%s), retrying in %.1fs", exc, backoff)
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, 5.0)
                continue
            metrics.REDIS_UP.set(1)
            backoff = 0.2
            for delivery in deliveries:
                self._spawn(delivery)

    async def _renewals(self) -> None:
        # Liveness of in-flight work: its own loop, so that it keeps running while draining.
        while True:
            await asyncio.sleep(self.config.tasks.lease_renew_seconds)
            held = {d.entry_id: t for t, d in self._inflight.items()}
            if not held:
                continue
            try:
                lost = await self.queue.renew(self._inflight.values())
            except (RedisError, OSError) as exc:
                log.warning("renewing claims failed: %s", exc)
                continue
            for entry_id in lost:
                # Another agent took it over: this one stalled past the claim bound. Its run is
                # the one that counts now; stop ours rather than run the task twice.
                task = held.get(entry_id)
                if task is not None:
                    metrics.outcome(TaskOutcome.LEASE_LOST).inc()
                    log.warning("lost the claim on %s to another agent", entry_id)
                    task.cancel()

    async def _maintain(self) -> None:
        policy = self.config.tasks
        tick = min(MAINTENANCE_TICK_SECONDS, policy.lease_renew_seconds)
        reclaim_every = max(1, round(policy.lease_renew_seconds / tick))
        sweep_every = max(1, round(min(60.0, policy.result_ttl_seconds / 10) / tick))
        prune_every = max(1, round(policy.claim_idle_seconds * 4 / tick))
        ticks = 0
        while not self._draining.is_set():
            await asyncio.sleep(tick)
            ticks += 1
            try:
                await self.queue.promote_due()
                await self.processor.reviews.apply_timeouts()
                if ticks % WAIT_SWEEP_TICKS == 0:
                    await self.processor.delegations.sweep()
                if ticks % reclaim_every == 0:
                    self._reclaim_into_free_slots(await self._reclaimable())
                if ticks % sweep_every == 0:
                    await self.queue.sweep()
                if ticks % prune_every == 0:
                    await self.queue.prune_consumers(int(policy.claim_idle_seconds * 4000))
            except (RedisError, OSError) as exc:
                if self._draining.is_set():
                    return
                log.warning("task maintenance failed: %s", exc)

    async def _reclaimable(self) -> list[Delivery]:
        free = self.config.concurrency - len(self._inflight)
        return await self.queue.reclaim(free) if free > 0 else []

    def _reclaim_into_free_slots(self, claimed: list[Delivery]) -> None:
        for delivery in claimed:
            metrics.RECLAIMED.inc()
            self._spawn(delivery)

    def _room(self) -> int:
        """How many deliveries to fetch: slots whose handler is not running.

        A delivery whose result step is queued has finished its handler, so its slot is refilled
        at once: the fetch goes out in the same round trip as the results (the group commit), and
        short tasks cost one round trip per batch rather than two. At most `concurrency` handlers
        run, though a few more deliveries may be held while their results are on their way.
        """
        ending = self.queue.ending
        running = sum(1 for d in self._inflight.values() if d.entry_id not in ending)
        return self.config.concurrency - running

    def _spawn(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._process(delivery), name=f"task-{delivery.entry_id}")
        self._inflight[task] = delivery
        metrics.INFLIGHT.set(len(self._inflight))
        task.add_done_callback(self._done)

    async def _process(self, delivery: Delivery) -> None:
        with logcontext.bound(task_id=task_id_of(delivery) or "-"):
            await self.processor.process(delivery)

    def _done(self, task: asyncio.Task[None]) -> None:
        delivery = self._inflight.pop(task, None)
        if delivery is not None:
            self.processor.forget(delivery.entry_id)
            self.queue.ending.discard(delivery.entry_id)
        self._slots.set()
        metrics.INFLIGHT.set(len(self._inflight))
        if not task.cancelled() and task.exception() is not None:
            log.error("task processing crashed: %r", task.exception())

    def _inject_fault(self) -> bool:
        # Deterministic, not random: exactly `fault_rate` of tasks fail, so a drill (or a test) of a
        # bad canary sees the error rate it configured.
        self._fault_credit += self.config.fault_rate
        if self._fault_credit >= 1.0:
            self._fault_credit -= 1.0
            return True
        return False

    # -- state ----------------------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_seconds)
            with contextlib.suppress(RedisError, OSError):
                await self._heartbeat_once()

    async def _heartbeat_once(self) -> None:
        now = self.clock()
        self._version = next_version(self._version, now)
        stats = self.stats
        update = StateUpdate(
            agent_id=self.config.agent_id,
            state=AgentState(
                id=self.config.agent_id,
                status=self.status,
                capabilities=list(self.config.capabilities),
                revision=self.config.revision,
                speaks=sorted(self.config.speaks),
                metrics=AgentMetrics(
                    requests_handled=stats.requests_handled,
                    last_active=stats.last_active,
                    tasks_completed=stats.tasks_completed,
                    tasks_failed=stats.tasks_failed,
                    latency_p95_ms=metrics.p95_ms(stats.latencies),
                ),
            ),
            version=self._version,
            timestamp=now,
        )
        await put_state(self.client, self.keys, update)
        await self.processor.protocols.flush()

    def _pong(self) -> dict[str, Any]:
        return {
            "agent_id": self.config.agent_id,
            "status": self.status,
            "inflight": len(self._inflight),
        }

    # -- drain ----------------------------------------------------------------------------------

    async def _drain_inflight(self) -> None:
        if not self._inflight:
            return
        grace = self.config.drain_grace_seconds
        log.info("waiting up to %.0fs for %d in-flight task(s)", grace, len(self._inflight))
        _, unfinished = await asyncio.wait(list(self._inflight), timeout=grace)
        # Read what each one was before cancelling: the done callback forgets it.
        leaving = [
            (self._inflight[t], *self.processor.held(self._inflight[t].entry_id))
            for t in unfinished
        ]
        for task in unfinished:
            task.cancel()
        await asyncio.gather(*unfinished, return_exceptions=True)
        for delivery, payload, version in leaving:
            await self.processor.out.hand_back(delivery, payload, version)
