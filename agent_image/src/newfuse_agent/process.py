"""One delivery, from untrusted bytes to its outcome: a result, a retry or a dead letter.

The decisions (does it run, is a failure retried, how long does it wait) are those of
newfuse.core.tasklife, and the writing of outcomes is newfuse_agent.outcomes; this module admits a
delivery (size, envelope, signature, replay, already finished?) and runs its handler. Its contract
is totality: whatever the delivery holds, the step ends in one outcome and is counted, and no input
can crash or stall the agent (the catch-all below turns a bug into a dead letter, not into an entry
redelivered for ever).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import random
import time
from collections.abc import Callable, Mapping
from dataclasses import replace
from typing import Any

from opentelemetry import trace
from redis.exceptions import RedisError

from newfuse.adapters.reviews import ReviewStore
from newfuse.core import tasklife
from newfuse.core.tasklife import Fail, Failure
from newfuse.tracing import span
from newfuse.wire.envelope import (
    Envelope,
    MessageRejectedError,
    MessageType,
    RejectReason,
    decode,
    validate,
)
from newfuse.wire.protocol import major_of
from newfuse.wire.sealing import SealError, is_sealed
from newfuse.wire.signing import Channel
from newfuse.wire.tasks import FailReason, LetterReason, ResultStatus, TaskPayload
from newfuse_agent import metrics
from newfuse_agent.config import AgentConfig
from newfuse_agent.contract import (
    Answers,
    DelegationRequired,
    Delegations,
    Handler,
    HandlerError,
    InputRequired,
    Outcome,
    TaskContext,
)
from newfuse_agent.delegations import Delegator
from newfuse_agent.metrics import TaskOutcome
from newfuse_agent.outcomes import TASK_PROTOCOL, Outcomes, Stats
from newfuse_agent.protocol import Protocols
from newfuse_agent.queue import Delivery, TaskQueue
from newfuse_agent.reviews import Reviews
from newfuse_agent.shadow import ShadowTap
from newfuse_agent.usage import Meter, UsageLedger, metering

log = logging.getLogger("newfuse_agent")
tracer = trace.get_tracer("newfuse.agent")


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
        self._signing = config.signing
        self._sealer = config.sealer
        self.tasks: dict[str, TaskPayload] = {}  # entry id -> decoded task, for hand-backs
        self.versions: dict[str, str] = {}  # entry id -> its protocol version, likewise
        self.protocols = Protocols(queue.client, queue.keys, config.agent_id, clock)
        self.out = Outcomes(config, queue, clock, stats)
        store = ReviewStore(queue.client, queue.keys, self.policy.result_ttl_seconds)
        self.reviews = Reviews(config, store, self.out)
        self.ledger = UsageLedger(queue.client, queue.keys, config.revision)
        sealed = config.encryption_key is not None
        self.shadow = ShadowTap(queue.client, queue.keys, config.revision, enabled=not sealed)
        self.delegations = Delegator(config, self.out.waits, self.out)

    async def process(self, delivery: Delivery) -> None:
        """Take one delivery to its outcome."""
        try:
            envelope, task = await self._admit(delivery)
        except MessageRejectedError as exc:
            await self.out.refuse(delivery, exc)
            return
        except (RedisError, OSError):
            raise  # it stays pending and is retried after the claim bound
        except Exception as exc:  # totality: a bug must dead-letter the input, not loop on it
            log.exception("unexpected error admitting %s", delivery.entry_id)
            reason = RejectReason.INVALID_ENVELOPE
            await self.out.refuse(delivery, MessageRejectedError(reason, f"{type(exc).__name__}"))
            return
        if task is None:
            return
        self.tasks[delivery.entry_id] = task
        self.versions[delivery.entry_id] = envelope.metadata.protocol_version
        TASK_PROTOCOL.set(envelope.metadata.protocol_version)
        with span(
            tracer,
            "newfuse.task.process",
            trace.SpanKind.CONSUMER,
            parent=envelope.metadata.traceparent,
            attributes=lambda: {
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

    def _opened(self, payload: dict[str, Any]) -> dict[str, Any]:
        """The task's fields, opened if the client sealed them (spec.encryption)."""
        if not is_sealed(payload):
            return payload
        if self._sealer is None:
            raise MessageRejectedError(
                RejectReason.CANNOT_UNSEAL, "the task is sealed and this agent holds no data key"
            )
        try:
            return self._sealer.open_fields(payload, "task")
        except SealError as exc:
            raise MessageRejectedError(RejectReason.CANNOT_UNSEAL, str(exc)) from None

    async def _admit(self, delivery: Delivery) -> tuple[Envelope, TaskPayload | None]:
        raw = delivery.raw
        # A character is at most 4 UTF-8 bytes: only a long envelope needs encoding to be measured.
        limit = self.policy.max_payload_bytes
        size = len(raw) if len(raw) * 4 <= limit else len(raw.encode("utf-8", "replace"))
        if size > limit:
            raise MessageRejectedError(
                RejectReason.OVERSIZE,
                f"the envelope is {size} bytes; this fleet accepts at most "
                f"{self.policy.max_payload_bytes} (spec.tasks.maxPayloadBytes)",
            )
        now = self.clock()
        envelope = decode(
            raw,
            keyring=self._signing.keyring,
            audience=self.queue.keys.audience(Channel.TASKS),
            require_signature=self.config.require_signatures,
            now=now,
            max_skew=dt.timedelta(seconds=self.policy.max_clock_skew_seconds),
            max_age=None,
        )
        if envelope.type is not MessageType.TASK:
            raise MessageRejectedError(
                RejectReason.INVALID_ENVELOPE, f"expected a task, got {envelope.type}"
            )
        fields = self._opened(envelope.payload)
        task = validate(TaskPayload, fields, RejectReason.INVALID_PAYLOAD, "payload.")
        major = major_of(envelope.metadata.protocol_version)
        self.protocols.note(major)
        if major not in self.config.speaks:  # before the replay guard: it goes on unchanged
            others = await self.protocols.spoken_by_others()
            await self.out.pass_on(delivery, task, major, others)
            return envelope, None
        signed = self._signing.keyring is not None and envelope.metadata.signature is not None
        if signed:
            first = await self.queue.guard(envelope.metadata.message_id, delivery.entry_id)
            if first != delivery.entry_id:
                raise MessageRejectedError(
                    RejectReason.REPLAYED,
                    f"message {envelope.metadata.message_id} was already delivered as {first!r}",
                )
        if delivery.times_delivered > 1 and await self.queue.has_result(task.task_id):
            # Finished work delivered again: a result stored just before Redis lost the ack (a
            # restart), or before its owner died. Acknowledge it without running it. A first
            # delivery cannot have a result (SUBMIT is idempotent, REQUEUE and PROMOTE check), so
            # the hot path skips the round trip.
            await self.queue.complete(
                delivery, task.task_id, b"", succeeded=True, revision="", executed=False
            )
            metrics.outcome(TaskOutcome.ALREADY_DONE).inc()
            return envelope, None
        if signed and tasklife.is_expired(envelope.metadata.timestamp, now, self.policy):
            await self.out.fail(
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

    def forget(self, entry_id: str) -> None:
        """A delivery's processing ended: drop what a hand-back would have needed."""
        self.tasks.pop(entry_id, None)
        self.versions.pop(entry_id, None)

    def held(self, entry_id: str) -> tuple[TaskPayload | None, str | None]:
        """What a hand-back of the entry needs: its task and protocol version, if known."""
        return self.tasks.get(entry_id), self.versions.get(entry_id)

    async def _resumed(
        self, delivery: Delivery, traceparent: str | None, task: TaskPayload
    ) -> TaskPayload | None:
        """A task back from a wait, with what it waited for; None if the wait ended it."""
        if task.review is not None:  # a person decided: store, fail, or run with the answer
            found = await self.reviews.resume(delivery, task, traceparent)
            if found is None:
                return None
            task = self.tasks[delivery.entry_id] = found
        if task.waiting_on is not None or task.deadlock is not None or task.stalled is not None:
            found = await self.delegations.resumed(delivery, task)
            if found is None:
                return None
            task = self.tasks[delivery.entry_id] = found
        return task

    async def _run(self, delivery: Delivery, traceparent: str | None, task: TaskPayload) -> None:
        resumed = await self._resumed(delivery, traceparent, task)
        if resumed is None:
            return
        task = resumed
        verdict = tasklife.on_delivery(task, delivery.times_delivered, self.clock(), self.policy)
        if isinstance(verdict, Fail):
            await self.out.fail(delivery, task, verdict, executed=False)
            return
        handler = self.handlers.get(task.handler)
        if handler is None:
            known = ", ".join(sorted(self.handlers))
            detail = f"no handler {task.handler!r} (known: {known})"
            await self.out.fail(
                delivery,
                task,
                Fail(FailReason.HANDLER_FAILED, detail),
                executed=False,
                reason=RejectReason.UNKNOWN_HANDLER,
            )
            return
        self.stats.requests_handled += 1
        if self._inject_fault():
            fault = Fail(
                FailReason.HANDLER_FAILED, f"NEWFUSE_FAULT_RATE={self.config.fault_rate:g}"
            )
            await self.out.fail(
                delivery, task, fault, executed=True, reason=LetterReason.INJECTED_FAULT
            )
            return
        if task.events:
            await self.queue.note_started(task.task_id)
        started = time.perf_counter()
        deadline = asyncio.timeout(verdict.timeout_seconds)
        try:
            output, meter = await self._handle(handler, task, deadline)
        except asyncio.CancelledError:
            raise
        except InputRequired as asked:  # parked for a person: the slot is free once this returns
            await self.reviews.park_question(delivery, task, asked, traceparent)
            return
        except DelegationRequired as delegated:  # parked on another fleet's task, likewise
            await self.delegations.park(delivery, task, delegated, traceparent)
            return
        except Exception as exc:  # a handler's failure is data, never the agent's crash
            failure = _failure(exc, verdict, timed_out=deadline.expired())
            await self._failed_attempt(delivery, traceparent, task, failure)
            return
        elapsed = time.perf_counter() - started
        metrics.TASK_SECONDS.observe(elapsed)
        if self.reviews.holds(task):
            await self.reviews.park_output(delivery, task, output, elapsed, traceparent)
            return
        await self.out.store(delivery, task, ResultStatus.SUCCEEDED, output, elapsed, traceparent)
        await self.shadow.offer(task, output, elapsed, meter.cost or meter.tokens)

    async def _handle(
        self, handler: Handler, task: TaskPayload, deadline: asyncio.Timeout
    ) -> tuple[Any, Meter]:
        """Run the handler, metering its model calls; their usage counts however it ends."""
        with metering() as meter:
            try:
                async with deadline:
                    return await handler(task.input, self._context_of(task)), meter
            finally:
                with contextlib.suppress(RedisError, OSError):
                    await self.ledger.record(meter)

    def _context_of(self, task: TaskPayload) -> TaskContext:
        """The handler's context for this run: the answers and delegation outcomes it has."""
        outcomes = tuple(
            tuple(None if d is None else Outcome(str(d.child), d.succeeded, d.output, d.error)
                  for d in step)
            for step in task.delegated
        )  # fmt: skip
        return replace(
            self.context,
            answers=Answers(tuple(task.answers)),
            delegations=Delegations(outcomes),
            task_id=task.task_id,
        )

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
            await self.out.fail(delivery, task, decision, executed=True)
            return
        outcome = (
            TaskOutcome.RETRIED
            if decision.task.deferrals == task.deferrals
            else (TaskOutcome.DEFERRED)
        )
        await self.out.retry(delivery, decision, traceparent)
        metrics.outcome(outcome).inc()


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
