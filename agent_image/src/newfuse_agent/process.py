"""One delivery, from untrusted bytes to exactly one outcome: a result, a retry or a dead letter.

The decisions (does it run, is a failure retried, how long does it wait) are those of
newfuse.core.tasklife; this module does the I/O around them. Its contract is totality: whatever the delivery holds, the
step ends in one of those outcomes and is counted, and no input can crash or stall the agent (the
catch-all below turns a bug into a dead letter, not into an entry redelivered for ever).

Exactly once: a result is stored by COMPLETE only (the first one wins, atomically with the ack);
a retry or hand-back is refused by REQUEUE if the task has a result or another agent owns it; and a
Redis error while storing a result is retried with backoff rather than losing finished work.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from opentelemetry import trace
from redis.exceptions import RedisError
from tenacity import AsyncRetrying, retry_if_exception_type, wait_random_exponential

from newfuse.core import tasklife
from newfuse.core.tasklife import Fail, FailReason, Failure, Retry
from newfuse.tracing import context_from, current_traceparent
from newfuse.wire.envelope import (
    Envelope,
    MessageRejectedError,
    MessageType,
    RejectReason,
    decode,
    encode,
    validate,
)
from newfuse.wire.tasks import DeadLetter, ResultPayload, ResultStatus, TaskPayload
from newfuse_agent import metrics
from newfuse_agent.config import AgentConfig
from newfuse_agent.contract import Handler, HandlerError, TaskContext
from newfuse_agent.metrics import TaskOutcome
from newfuse_agent.queue import Delivery, TaskQueue

log = logging.getLogger("newfuse_agent")
tracer = trace.get_tracer("newfuse.agent")
TASK_ID_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"
)
# Refusals whose task id cannot be trusted to be the sender's own: no result is stored for them,
# since it would pre-empt the real task of that id.
NO_RESULT_FOR: Final = frozenset({RejectReason.REPLAYED, RejectReason.BAD_SIGNATURE})


@dataclass
class Stats:
    """What this agent process has done (reported in its heartbeat)."""

    requests_handled: int = 0
    tasks_completed: int = 0
    tasks_failed: int = 0
    last_active: dt.datetime | None = None
    latencies: list[float] = field(default_factory=list)

    def record(self, succeeded: bool, elapsed: float, now: dt.datetime) -> None:
        """Count one stored result."""
        self.last_active = now
        self.latencies = [*self.latencies[-499:], elapsed * 1000]
        if succeeded:
            self.tasks_completed += 1
        else:
            self.tasks_failed += 1


def task_id_of(delivery: Delivery) -> str | None:
    """The stream entry's task id field, if it is a well-formed id."""
    task_id = delivery.fields.get("task_id", "")
    ok = 0 < len(task_id) <= 128 and set(task_id) <= TASK_ID_CHARS
    return task_id if ok else None


class Processor:
    """Runs deliveries for one agent."""

    def __init__(
        self,
        config: AgentConfig,
        queue: TaskQueue,
        handlers: Mapping[str, Handler],
        context: TaskContext,
        clock: Callable[[], dt.datetime],
        stats: Stats,
        inject_fault: Callable[[], bool],
    ) -> None:
        """Process for ``config``'s fleet through ``queue``."""
        self.config, self.queue, self.handlers, self.context = config, queue, handlers, context
        self.clock, self.stats, self._inject_fault = clock, stats, inject_fault
        self.policy = config.tasks
        self._key = config.signing_key.encode() if config.signing_key else None
        self.tasks: dict[str, TaskPayload] = {}  # entry id -> decoded task, for hand-backs

    async def process(self, delivery: Delivery) -> None:
        """Take one delivery to its outcome."""
        try:
            envelope, task = await self._admit(delivery)
        except MessageRejectedError as exc:
            await self._refuse(delivery, exc)
            return
        except (RedisError, OSError):
            raise  # it stays pending and is retried after the claim bound
        except Exception as exc:  # totality: a bug must dead-letter the input, not loop on it
            log.exception("unexpected error admitting %s", delivery.entry_id)
            reason = RejectReason.INVALID_ENVELOPE
            await self._refuse(delivery, MessageRejectedError(reason, f"{type(exc).__name__}"))
            return
        if task is None:
            return
        self.tasks[delivery.entry_id] = task
        with tracer.start_as_current_span(
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
        ):
            await self._run(delivery, envelope.metadata.traceparent, task)

    async def _admit(self, delivery: Delivery) -> tuple[Envelope, TaskPayload | None]:
        raw = delivery.raw
        size = len(raw.encode("utf-8", "replace"))
        if size > self.policy.max_payload_bytes:
            raise MessageRejectedError(
                RejectReason.OVERSIZE,
                f"the envelope is {size} bytes; this fleet accepts at most "
                f"{self.policy.max_payload_bytes} (spec.tasks.maxPayloadBytes)",
            )
        now = self.clock()
        envelope = decode(
            raw,
            key=self._key,
            require_signature=self.config.require_signatures,
            now=now,
            max_skew=dt.timedelta(seconds=self.policy.max_clock_skew_seconds),
            max_age=None,
        )
        if envelope.type is not MessageType.TASK:
            raise MessageRejectedError(
                RejectReason.INVALID_ENVELOPE, f"expected a task, got {envelope.type}"
            )
        task = validate(TaskPayload, envelope.payload, RejectReason.INVALID_PAYLOAD, "payload.")
        signed = self._key is not None and envelope.metadata.signature is not None
        if signed:
            first = await self.queue.guard(envelope.metadata.message_id, delivery.entry_id)
            if first != delivery.entry_id:
                raise MessageRejectedError(
                    RejectReason.REPLAYED,
                    f"message {envelope.metadata.message_id} was already delivered as {first!r}",
                )
        if await self.queue.has_result(task.task_id):
            # Finished work delivered again (a resubmission after expiry races, a requeue that
            # lost a race): acknowledge it without running it.
            await self.queue.complete(
                delivery, task.task_id, b"", succeeded=True, revision="", executed=False
            )
            metrics.TASKS.labels(TaskOutcome.ALREADY_DONE).inc()
            return envelope, None
        if signed and tasklife.is_expired(envelope.metadata.timestamp, now, self.policy):
            await self._fail(
                delivery,
                task,
                Fail(
                    FailReason.EXPIRED,
                    "signed longer ago than the replay guard remembers "
                    f"({self.policy.result_ttl_seconds:g}s, spec.tasks.resultTTLSeconds)",
                ),
                executed=False,
            )
            return envelope, None
        return envelope, task

    async def _run(self, delivery: Delivery, traceparent: str | None, task: TaskPayload) -> None:
        verdict = tasklife.on_delivery(task, delivery.times_delivered, self.clock(), self.policy)
        if isinstance(verdict, Fail):
            await self._fail(delivery, task, verdict, executed=False)
            return
        handler = self.handlers.get(task.handler)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            detail = f"no handler {task.handler!r} (known: {known})"
            await self._fail(
                delivery,
                task,
                Fail(FailReason.HANDLER_FAILED, detail),
                False,
                RejectReason.UNKNOWN_HANDLER,
            )
            return
        self.stats.requests_handled += 1
        if self._inject_fault():
            fault = Fail(
                FailReason.HANDLER_FAILED, f"NEWFUSE_FAULT_RATE={self.config.fault_rate:g}"
            )
            await self._fail(delivery, task, fault, executed=True, reason="injected_fault")
            return
        started = time.perf_counter()
        deadline = asyncio.timeout(verdict.timeout_seconds)
        try:
            async with deadline:
                output = await handler(task.input, self.context)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a handler's failure is data, never the agent's crash
            failure = _failure(exc, verdict, timed_out=deadline.expired())
            await self._failed_attempt(delivery, traceparent, task, failure)
            return
        elapsed = time.perf_counter() - started
        metrics.TASK_SECONDS.observe(elapsed)
        await self._store(delivery, task, ResultStatus.SUCCEEDED, output, elapsed, traceparent)

    async def _failed_attempt(
        self, delivery: Delivery, traceparent: str | None, task: TaskPayload, failure: Failure
    ) -> None:
        decision = tasklife.on_failure(
            task,
            failure,
            now=self.clock(),
            agent_id=self.config.agent_id,
            policy=self.policy,
            jitter=random.random(),  # noqa: S311 - spreading retries, not security
        )
        if isinstance(decision, Fail):
            await self._fail(delivery, task, decision, executed=True)
            return
        outcome = (
            TaskOutcome.RETRIED
            if decision.task.deferrals == task.deferrals
            else (TaskOutcome.DEFERRED)
        )
        await self._retry(delivery, decision, traceparent)
        metrics.TASKS.labels(outcome).inc()

    async def _retry(self, delivery: Delivery, decision: Retry, traceparent: str | None) -> None:
        task = decision.task
        reply = await self._persist(
            lambda: self.queue.requeue(
                delivery,
                task.task_id,
                self.task_envelope(task, traceparent),
                task.priority,
                decision.delay_seconds,
            )
        )
        if reply == "lost":
            metrics.TASKS.labels(TaskOutcome.LEASE_LOST).inc()

    async def _store(
        self,
        delivery: Delivery,
        task: TaskPayload,
        status: ResultStatus,
        output: Any,
        elapsed: float,
        traceparent: str | None,
        *,
        error: str | None = None,
        reason: str | None = None,
        letter: DeadLetter | None = None,
        executed: bool = True,
    ) -> None:
        now = self.clock()
        result = ResultPayload(
            task_id=task.task_id,
            status=status,
            output=output,
            error=error,
            reason=reason,
            history=task.history,
            agent_id=self.config.agent_id,
            revision=self.config.revision,
            attempts=tasklife.attempts_used(task, delivery.times_delivered),
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
            stored = await self._persist(
                lambda: self.queue.complete(
                    delivery,
                    task.task_id,
                    envelope,
                    succeeded=succeeded,
                    revision=self.config.revision,
                    executed=executed,
                    letter=letter,
                )
            )
        if not stored:
            if executed:
                metrics.TASKS.labels(TaskOutcome.DUPLICATE).inc()
            return
        self.stats.record(succeeded, elapsed, now)
        metrics.TASKS.labels(TaskOutcome.SUCCEEDED if succeeded else TaskOutcome.FAILED).inc()

    async def _persist(self, step: Callable[[], Awaitable[Any]]) -> Any:
        # Finished work is never thrown away for a Redis blip: retry until Redis answers. The entry
        # stays ours meanwhile (nobody else can claim it while Redis is down either).
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((RedisError, OSError)),
            wait=wait_random_exponential(multiplier=0.2, max=5),
            before_sleep=lambda state: log.warning(
                "storing an outcome failed (%s), retrying",
                state.outcome and state.outcome.exception(),
            ),
            reraise=True,
        ):
            with attempt:
                return await step()
        return None  # pragma: no cover - AsyncRetrying either returns or raises

    async def _fail(
        self,
        delivery: Delivery,
        task: TaskPayload,
        verdict: Fail,
        executed: bool,
        reason: str | None = None,
    ) -> None:
        """End a task FAILED: one atomic step stores the result and its dead letter."""
        why = reason or verdict.reason.value
        metrics.TASKS.labels(TaskOutcome.DEAD_LETTERED).inc()
        trace.get_current_span().set_status(trace.StatusCode.ERROR, f"{why}: {verdict.detail}")
        letter = self.letter(delivery, why, verdict.detail, task.task_id)
        await self._store(
            delivery,
            task,
            ResultStatus.FAILED,
            None,
            0.0,
            None,
            error=f"{why}: {verdict.detail}",
            reason=why,
            letter=letter,
            executed=executed,
        )

    async def _refuse(self, delivery: Delivery, exc: MessageRejectedError) -> None:
        """A message that is not a runnable task: a dead letter, and a result if it has an id."""
        metrics.REJECTED.labels(exc.reason).inc()
        log.warning("dead-lettered %s: %s", delivery.entry_id, exc)
        task_id = task_id_of(delivery)
        if task_id is None or exc.reason in NO_RESULT_FOR:
            metrics.TASKS.labels(TaskOutcome.DEAD_LETTERED).inc()
            await self.queue.dead_letter(
                delivery, self.letter(delivery, exc.reason, exc.detail, task_id)
            )
            return
        # The client waiting for this id returns at once with the reason, not at its timeout.
        stand_in = TaskPayload(task_id=task_id, handler="-")
        await self._fail(
            delivery, stand_in, Fail(FailReason.HANDLER_FAILED, exc.detail), False, exc.reason
        )

    def letter(
        self, delivery: Delivery, reason: str, detail: str, task_id: str | None
    ) -> DeadLetter:
        """The dead letter of ``delivery``."""
        return DeadLetter(
            reason=reason,
            detail=detail[:2000],
            raw=delivery.raw[:65536],
            agent_id=self.config.agent_id,
            source_stream=delivery.stream,
            task_id=task_id,
            attempts=delivery.times_delivered,
            at=self.clock(),
        )

    def task_envelope(self, task: TaskPayload, traceparent: str | None) -> bytes:
        """``task`` as a fresh envelope from this agent (signed when the fleet signs)."""
        return encode(
            MessageType.TASK,
            task.model_dump(mode="json"),
            self.config.agent_id,
            now=self.clock(),
            key=self._key,
            traceparent=traceparent,
        )

    async def hand_back(self, delivery: Delivery, payload: TaskPayload | None) -> None:
        """Put an unfinished task back on its stream (a drain), unless it finished meanwhile."""
        if payload is None:
            return  # not even decoded: it stays pending and is reclaimed after the claim bound
        with contextlib.suppress(RedisError, OSError):
            reply = await self.queue.requeue(
                delivery, payload.task_id, self.task_envelope(payload, None), payload.priority
            )
            if reply not in ("done", "lost"):
                metrics.TASKS.labels(TaskOutcome.HANDED_BACK).inc()


def _failure(exc: Exception, run: tasklife.Run, *, timed_out: bool) -> Failure:
    if timed_out:
        return Failure(
            f"no result within {run.timeout_seconds:g}s (the task's timeout)",
            retryable=False,
            timed_out=True,
        )
    error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if isinstance(exc, HandlerError):
        return Failure(
            error,
            retryable=exc.retryable,
            retry_after=exc.retry_after,
            counts_as_attempt=exc.counts_as_attempt,
        )
    return Failure(error)
