"""The agent: takes tasks from its fleet's streams, runs handlers, stores results, reports state.

Delivery is at-least-once and results are exactly-once: a task is acknowledged only in the same
atomic step that stores its first result (COMPLETE_LUA), so a crash before that step leaves the
task pending for another agent to reclaim, and a crash after it cannot produce a second result.

Bad input never crashes the agent: whatever a message is, it ends as a result, a retry, or a
dead letter with a reason, and is counted.

On SIGTERM (or a `drain` on the coordination channel) the agent stops taking tasks, lets in-flight
ones finish within the grace period, hands the rest back to the stream, marks itself inactive and
leaves the consumer group.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections import deque
from collections.abc import Callable, Mapping
from typing import Any

import redis.asyncio as aioredis
from opentelemetry import trace
from redis.exceptions import RedisError

from newfuse import logcontext
from newfuse.tracing import context_from, current_traceparent
from newfuse.wire.envelope import (
    MessageRejectedError,
    MessageType,
    RejectReason,
    decode,
    encode,
    validate,
)
from newfuse.wire.keys import FleetKeys
from newfuse.wire.state import (
    STATE_CAS_LUA,
    AgentMetrics,
    AgentState,
    AgentStatus,
    StateUpdate,
    next_version,
)
from newfuse.wire.tasks import DeadLetter, ResultPayload, ResultStatus, TaskPayload
from newfuse_agent import metrics
from newfuse_agent.config import AgentConfig
from newfuse_agent.handlers import Handler, HandlerError, TaskContext
from newfuse_agent.metrics import TaskOutcome
from newfuse_agent.queue import Delivery, TaskQueue, utc_now

log = logging.getLogger("newfuse_agent")
tracer = trace.get_tracer("newfuse.agent")
Clock = Callable[[], dt.datetime]
REPLAY_WINDOW_SECONDS = 600


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
        self.config, self.client, self.handlers, self.context, self.clock = (
            config,
            client,
            handlers,
            context,
            clock,
        )
        self.keys = FleetKeys(config.namespace, config.fleet)
        self.queue = TaskQueue(client, self.keys, config.consumer)
        self._key = config.signing_key.encode() if config.signing_key else None
        self._cas = client.register_script(STATE_CAS_LUA)
        self._inflight: dict[asyncio.Task[None], Delivery] = {}
        self._tasks: dict[str, TaskPayload] = {}  # entry id -> decoded task, for hand-backs
        self._draining = asyncio.Event()
        self.ready = False
        self.status = AgentStatus.ACTIVE
        self.requests_handled = self.tasks_completed = self.tasks_failed = 0
        self.last_active: dt.datetime | None = None
        self._latencies: deque[float] = deque(maxlen=500)
        self._version = 0
        self._fault_credit = 0.0

    # -- lifecycle ------------------------------------------------------------------------------

    def request_drain(self) -> None:
        """Begin draining (idempotent); `run()` returns once done."""
        if not self._draining.is_set():
            log.info("drain requested", extra={"agent": self.config.agent_id})
        self._draining.set()

    async def run(self) -> None:
        """Work until drained."""
        await self._until_redis(self.queue.ensure_groups)
        await self._heartbeat_once()
        self.ready = True
        loops = [
            asyncio.create_task(self._consume(), name="consume"),
            asyncio.create_task(self._reclaim(), name="reclaim"),
            asyncio.create_task(self._coordination(), name="coordination"),
        ]
        heartbeat = asyncio.create_task(self._heartbeats(), name="heartbeat")
        await self._draining.wait()
        metrics.DRAINING.set(1)
        self.ready = False
        # Inactive from the moment it stops taking tasks: even if the drain is cut short by
        # SIGKILL, the fleet's state already says this agent is going.
        self.status = AgentStatus.INACTIVE
        with contextlib.suppress(RedisError, OSError):
            await asyncio.wait_for(self._heartbeat_once(), 5)
        watchdog = asyncio.create_task(self._watch_drain(), name="drain-watchdog")
        for task in loops:
            task.cancel()
        # Bounded: a loop stuck in a library call must not hold the drain past its grace period.
        await asyncio.wait(loops, timeout=5)
        await self._drain_inflight()
        watchdog.cancel()
        heartbeat.cancel()
        await asyncio.gather(heartbeat, return_exceptions=True)
        self.status = AgentStatus.INACTIVE
        with contextlib.suppress(RedisError, OSError):
            await self._heartbeat_once()
            if await self.queue.pending_count() == 0:
                await self.queue.leave()
        log.info("drained", extra={"agent": self.config.agent_id})

    async def _watch_drain(self) -> None:
        """Log every task's stack if draining overruns its grace period (to find what hangs)."""
        await asyncio.sleep(self.config.drain_grace_seconds + 2)
        for task in asyncio.all_tasks():
            frames = [
                f"{f.f_code.co_filename}:{f.f_lineno} {f.f_code.co_name}"
                for f in task.get_stack(limit=6)
            ]
            log.error("drain overran: task %s at %s", task.get_name(), " <- ".join(frames))

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
            free = self.config.concurrency - len(self._inflight)
            if free <= 0:
                await asyncio.wait(list(self._inflight), return_when=asyncio.FIRST_COMPLETED)
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

    async def _reclaim(self) -> None:
        idle_ms = int(self.config.claim_idle_seconds * 1000)
        rounds = 0
        while not self._draining.is_set():
            await asyncio.sleep(self.config.reclaim_interval_seconds)
            free = self.config.concurrency - len(self._inflight)
            if free <= 0:
                continue
            try:
                claimed = await self.queue.reclaim(idle_ms, free)
                rounds += 1
                if rounds % 12 == 0:
                    await self.queue.prune_consumers(idle_ms * 4)
            except (RedisError, OSError) as exc:
                if self._draining.is_set():
                    return
                log.warning("reclaiming failed: %s", exc)
                continue
            for delivery in claimed:
                metrics.RECLAIMED.inc()
                self._spawn(delivery)

    def _spawn(self, delivery: Delivery) -> None:
        task = asyncio.create_task(self._process(delivery), name=f"task-{delivery.entry_id}")
        self._inflight[task] = delivery
        metrics.INFLIGHT.set(len(self._inflight))
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        delivery = self._inflight.pop(task, None)
        if delivery is not None:
            self._tasks.pop(delivery.entry_id, None)
        metrics.INFLIGHT.set(len(self._inflight))
        if not task.cancelled() and task.exception() is not None:
            log.error("task processing crashed: %r", task.exception())

    async def _heartbeats(self) -> None:
        while True:
            await asyncio.sleep(self.config.heartbeat_seconds)
            with contextlib.suppress(RedisError, OSError):
                await self._heartbeat_once()

    async def _heartbeat_once(self) -> None:
        now = self.clock()
        self._version = next_version(self._version, now)
        update = StateUpdate(
            agent_id=self.config.agent_id,
            state=AgentState(
                id=self.config.agent_id,
                status=self.status,
                capabilities=list(self.config.capabilities),
                revision=self.config.revision,
                metrics=AgentMetrics(
                    requests_handled=self.requests_handled,
                    last_active=self.last_active,
                    tasks_completed=self.tasks_completed,
                    tasks_failed=self.tasks_failed,
                    latency_p95_ms=self.latency_p95_ms(),
                ),
            ),
            version=self._version,
            timestamp=now,
        )
        field = self.config.agent_id
        await self._cas(
            keys=[self.keys.agents, self.keys.versions],
            args=[field, self.keys.agent_version_field(field), update.version, update.to_json()],
        )

    def latency_p95_ms(self) -> float | None:
        """95th percentile handler latency over the recent tasks."""
        if not self._latencies:
            return None
        ordered = sorted(self._latencies)
        return round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 3)

    async def _coordination(self) -> None:
        # Pub/sub, not a stream: drain, reload and ping are notices about the present. A missed one
        # loses nothing (a drain is also delivered as SIGTERM by Kubernetes, a ping is re-sent), so
        # they need neither persistence nor acknowledgement.
        while not self._draining.is_set():
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self.keys.coordination_channel)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        await self._on_coordination(message["data"])
            except (RedisError, OSError) as exc:
                if self._draining.is_set():
                    return
                log.warning("coordination channel lost (%s), resubscribing", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await asyncio.wait_for(pubsub.aclose(), 2)  # type: ignore[no-untyped-call]

    async def _on_coordination(self, raw: str | bytes) -> None:
        try:
            envelope = decode(
                raw,
                key=self._key,
                require_signature=self.config.require_signatures,
                now=self.clock(),
            )
        except MessageRejectedError as exc:
            metrics.REJECTED.labels(exc.reason).inc()
            log.warning("refused a coordination message: %s", exc)
            return
        target = str(envelope.payload.get("target", "*"))
        if target not in ("*", self.config.agent_id, f"revision:{self.config.revision}"):
            return
        if envelope.type is MessageType.DRAIN:
            self.request_drain()
        elif envelope.type is MessageType.PING:
            pong = encode(
                MessageType.PONG,
                {
                    "agent_id": self.config.agent_id,
                    "status": self.status,
                    "inflight": len(self._inflight),
                },
                self.config.agent_id,
                now=self.clock(),
                key=self._key,
            )
            await self.client.publish(self.keys.coordination_channel, pong)
        elif envelope.type is MessageType.RELOAD:
            level = envelope.payload.get("log_level")
            if isinstance(level, str):
                logging.getLogger().setLevel(level.upper())
            log.info("reloaded", extra={"payload": envelope.payload})

    # -- one task -------------------------------------------------------------------------------

    async def _process(self, delivery: Delivery) -> None:
        now = self.clock()
        try:
            envelope = decode(
                delivery.raw,
                key=self._key,
                require_signature=self.config.require_signatures,
                now=now,
            )
            if envelope.type is not MessageType.TASK:
                raise MessageRejectedError(
                    RejectReason.INVALID_ENVELOPE, f"expected a task, got {envelope.type}"
                )
            task = validate(TaskPayload, envelope.payload, RejectReason.INVALID_PAYLOAD, "payload.")
            if self._key is not None and envelope.metadata.signature is not None:
                await self._guard_replay(envelope.metadata.message_id, delivery.entry_id)
        except MessageRejectedError as exc:
            await self._reject(delivery, exc, None)
            return
        # The task's trace continues here from the submitter's span (metadata.traceparent);
        # every log line about it carries its id.
        with (
            logcontext.bound(task_id=task.task_id),
            tracer.start_as_current_span(
                "newfuse.task.process",
                context=context_from(envelope.metadata.traceparent),
                kind=trace.SpanKind.CONSUMER,
                attributes={
                    "newfuse.task_id": task.task_id,
                    "newfuse.namespace": self.config.namespace,
                    "newfuse.fleet": self.config.fleet,
                    "newfuse.revision": self.config.revision,
                    "newfuse.agent_id": self.config.agent_id,
                    "newfuse.handler": task.handler,
                    "newfuse.attempt": task.attempt,
                },
            ),
        ):
            await self._handle(delivery, envelope.metadata.traceparent, task)

    async def _handle(self, delivery: Delivery, traceparent: str | None, task: TaskPayload) -> None:
        self._tasks[delivery.entry_id] = task
        handler = self.handlers.get(task.handler)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            await self._fail(
                delivery,
                task,
                RejectReason.UNKNOWN_HANDLER,
                f"no handler {task.handler!r} (known: {known})",
                0.0,
            )
            return
        if delivery.times_delivered > task.max_attempts:
            detail = (
                f"delivered {delivery.times_delivered} times without a result "
                "(an agent may crash on it)"
            )
            await self._fail(delivery, task, "exhausted", detail, 0.0)
            return
        self.requests_handled += 1
        if self._inject_fault():
            await self._fail(
                delivery,
                task,
                "injected_fault",
                f"NEWFUSE_FAULT_RATE={self.config.fault_rate:g}",
                0.0,
            )
            return
        started = time.perf_counter()
        try:
            output = await asyncio.wait_for(handler(task.input, self.context), task.timeout_seconds)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a handler's failure is data, never the agent's crash
            elapsed = time.perf_counter() - started
            retryable = exc.retryable if isinstance(exc, HandlerError) else True
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            if retryable and task.attempt < task.max_attempts:
                retry = task.model_copy(update={"attempt": task.attempt + 1})
                await self.queue.requeue(
                    delivery,
                    task.task_id,
                    self._task_envelope(retry, traceparent),
                    task.priority,
                )
                metrics.TASKS.labels(TaskOutcome.RETRIED).inc()
                return
            await self._fail(delivery, task, "handler_failed", error, elapsed)
            return
        elapsed = time.perf_counter() - started
        metrics.TASK_SECONDS.observe(elapsed)
        await self._store(
            delivery,
            task,
            ResultStatus.SUCCEEDED,
            output,
            None,
            elapsed,
            traceparent,
        )

    def _inject_fault(self) -> bool:
        # Deterministic, not random: exactly `fault_rate` of tasks fail, so a drill (or a test) of a
        # bad canary sees the error rate it configured.
        self._fault_credit += self.config.fault_rate
        if self._fault_credit >= 1.0:
            self._fault_credit -= 1.0
            return True
        return False

    async def _guard_replay(self, message_id: str, entry_id: str) -> None:
        # A redelivery of the same stream entry is legitimate (at-least-once); the same signed
        # message under a different entry id is somebody replaying it.
        key = self.keys.replay_guard(message_id)
        if await self.client.set(key, entry_id, nx=True, ex=REPLAY_WINDOW_SECONDS):
            return
        seen = await self.client.get(key)
        if seen != entry_id:
            raise MessageRejectedError(
                RejectReason.REPLAYED, f"message {message_id} was already delivered as {seen!r}"
            )

    def _task_envelope(self, task: TaskPayload, traceparent: str | None) -> bytes:
        return encode(
            MessageType.TASK,
            task.model_dump(mode="json"),
            self.config.agent_id,
            now=self.clock(),
            key=self._key,
            traceparent=traceparent,
        )

    async def _store(
        self,
        delivery: Delivery,
        task: TaskPayload,
        status: ResultStatus,
        output: Any,
        error: str | None,
        elapsed: float,
        traceparent: str | None,
    ) -> None:
        now = self.clock()
        result = ResultPayload(
            task_id=task.task_id,
            status=status,
            output=output,
            error=error,
            agent_id=self.config.agent_id,
            revision=self.config.revision,
            attempts=task.attempt,
            latency_ms=round(elapsed * 1000, 3),
            finished_at=now,
        )
        succeeded = status is ResultStatus.SUCCEEDED
        with tracer.start_as_current_span(
            "newfuse.task.result",
            kind=trace.SpanKind.PRODUCER,
            attributes={"newfuse.task_id": task.task_id, "newfuse.result_status": status.value},
        ):
            envelope = encode(
                MessageType.RESULT,
                result.model_dump(mode="json"),
                self.config.agent_id,
                now=now,
                key=self._key,
                traceparent=current_traceparent() or traceparent,
            )
            stored = await self.queue.complete(
                delivery, task.task_id, envelope, succeeded, self.config.revision
            )
        if not stored:
            metrics.TASKS.labels(TaskOutcome.DUPLICATE).inc()
            return
        self.last_active = now
        self._latencies.append(elapsed * 1000)
        if succeeded:
            self.tasks_completed += 1
            metrics.TASKS.labels(TaskOutcome.SUCCEEDED).inc()
        else:
            self.tasks_failed += 1
            metrics.TASKS.labels(TaskOutcome.FAILED).inc()

    async def _fail(
        self, delivery: Delivery, task: TaskPayload, reason: str, detail: str, elapsed: float
    ) -> None:
        """A task that will not succeed: dead-letter it, and give the client a failed result."""
        await self.queue.dead_letter(
            delivery, self._letter(delivery, reason, detail, task.task_id), acknowledge=False
        )
        metrics.TASKS.labels(TaskOutcome.DEAD_LETTERED).inc()
        trace.get_current_span().set_status(trace.StatusCode.ERROR, f"{reason}: {detail}")
        await self._store(
            delivery, task, ResultStatus.FAILED, None, f"{reason}: {detail}", elapsed, None
        )

    async def _reject(
        self, delivery: Delivery, exc: MessageRejectedError, task_id: str | None
    ) -> None:
        metrics.REJECTED.labels(exc.reason).inc()
        metrics.TASKS.labels(TaskOutcome.DEAD_LETTERED).inc()
        log.warning(
            "dead-lettered %s: %s", delivery.entry_id, exc, extra={"agent": self.config.agent_id}
        )
        await self.queue.dead_letter(
            delivery, self._letter(delivery, exc.reason, exc.detail, task_id), acknowledge=True
        )

    def _letter(
        self, delivery: Delivery, reason: str, detail: str, task_id: str | None
    ) -> DeadLetter:
        return DeadLetter(
            reason=reason,
            detail=detail[:2000],
            raw=delivery.raw[:65536],
            agent_id=self.config.agent_id,
            source_stream=delivery.stream,
            task_id=task_id or delivery.fields.get("task_id"),
            attempts=delivery.times_delivered,
            at=self.clock(),
        )

    async def _drain_inflight(self) -> None:
        if not self._inflight:
            return
        grace = self.config.drain_grace_seconds
        log.info("waiting up to %.0fs for %d in-flight task(s)", grace, len(self._inflight))
        _, unfinished = await asyncio.wait(list(self._inflight), timeout=grace)
        handed_back = []
        for task in unfinished:
            delivery = self._inflight[task]
            payload = self._tasks.get(delivery.entry_id)
            task.cancel()
            handed_back.append((delivery, payload))
        await asyncio.gather(*unfinished, return_exceptions=True)
        for delivery, payload in handed_back:
            with contextlib.suppress(RedisError, OSError):
                if payload is None:
                    continue  # not even decoded: it stays pending and is reclaimed after claim_idle
                await self.queue.requeue(
                    delivery, payload.task_id, self._task_envelope(payload, None), payload.priority
                )
                metrics.TASKS.labels(TaskOutcome.HANDED_BACK).inc()
