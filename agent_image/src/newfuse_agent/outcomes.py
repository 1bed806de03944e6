"""How a delivery ends: a stored result (with its dead letter if it failed), a retry or a hand-back.

Exactly once lives here: a result is stored by COMPLETE only (the first one wins, atomically with
the ack and the dead letter); a retry or hand-back is refused by REQUEUE if the task has a result
or another agent owns the delivery now; and a Redis error while storing an outcome is retried
with backoff rather than losing finished work.
"""

from __future__ import annotations

import contextlib
import contextvars
import datetime as dt
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

import orjson
from opentelemetry import trace
from redis.exceptions import RedisError
from tenacity import (
    AsyncRetrying,
    retry_if_exception_type,
    retry_if_not_exception_type,
    wait_random_exponential,
)

from newfuse.adapters.streamread import verified_result
from newfuse.adapters.waits import WaitStore
from newfuse.core import tasklife
from newfuse.core.tasklife import Fail, Retry
from newfuse.tracing import current_traceparent, span
from newfuse.wire.delegation import TaskRef
from newfuse.wire.envelope import (
    PROTOCOL_VERSION,
    MessageRejectedError,
    MessageType,
    RejectReason,
    encode,
)
from newfuse.wire.protocol import PASS_ON_DELAY_SECONDS, majors_text
from newfuse.wire.sealing import RESULT_CLEAR, TASK_CLEAR
from newfuse.wire.signing import Channel
from newfuse.wire.tasks import (
    DeadLetter,
    FailReason,
    LetterReason,
    ResultPayload,
    ResultStatus,
    TaskPayload,
)
from newfuse_agent import metrics
from newfuse_agent.config import AgentConfig
from newfuse_agent.metrics import TaskOutcome
from newfuse_agent.queue import Delivery, TaskQueue

log = logging.getLogger("newfuse_agent")
# The protocol version of the task this asyncio task runs: a task written back (a retry, a park, a
# hand-back) keeps its major, so an agent that does not speak it still passes it on.
TASK_PROTOCOL: contextvars.ContextVar[str] = contextvars.ContextVar(
    "task_protocol", default=PROTOCOL_VERSION
)
tracer = trace.get_tracer("newfuse.agent")
TASK_ID_CHARS: Final = frozenset(
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:-"
)
# Refusals whose task id cannot be trusted to be the sender's own: no result is stored for them,
# since it would pre-empt the real task of that id.
NO_RESULT_FOR: Final = frozenset(
    {
        RejectReason.REPLAYED,
        RejectReason.BAD_SIGNATURE,
        RejectReason.UNKNOWN_KEY,
        RejectReason.WRONG_AUDIENCE,
    }
)
# A failed task's letter keeps its envelope so that `newfuse dlq --requeue` can submit it again; a
# refused message cannot be requeued, so only a sample is kept (a flood of hostile megabytes must
# not fill Redis through the DLQ).
RAW_KEPT: Final = 65536
REFUSED_RAW_KEPT: Final = 4096


@dataclass
class Stats:
    """What this agent process has done (reported in its heartbeat)."""

    requests_handled: int = 0
    tasks_completed: int = 0
    tasks_failed: int = 0
    last_active: dt.datetime | None = None
    latencies: deque[float] = field(default_factory=lambda: deque(maxlen=500))

    def record(self, elapsed: float, now: dt.datetime, *, succeeded: bool) -> None:
        """Count one stored result."""
        self.last_active = now
        self.latencies.append(elapsed * 1000)
        if succeeded:
            self.tasks_completed += 1
        else:
            self.tasks_failed += 1


def task_id_of(delivery: Delivery) -> str | None:
    """The stream entry's task id field, if it is a well-formed id."""
    task_id = delivery.fields.get("task_id", "")
    ok = 0 < len(task_id) <= 128 and set(task_id) <= TASK_ID_CHARS
    return task_id if ok else None


class Outcomes:
    """Writes the outcomes of one agent's deliveries."""

    def __init__(
        self,
        config: AgentConfig,
        queue: TaskQueue,
        clock: Callable[[], dt.datetime],
        stats: Stats,
    ) -> None:
        """Write through ``queue`` as ``config``'s agent."""
        self.config, self.queue, self.clock, self.stats = config, queue, clock, stats
        self._signing = config.signing
        self._sealer = config.sealer
        self.waits = WaitStore(queue.client)

    async def retry(self, delivery: Delivery, decision: Retry, traceparent: str | None) -> None:
        task = decision.task
        reply = await self.persist(
            lambda: self.queue.requeue(
                delivery,
                task.task_id,
                self.task_envelope(task, traceparent),
                task.priority,
                decision.delay_seconds,
            )
        )
        if reply == "lost":
            metrics.outcome(TaskOutcome.LEASE_LOST).inc()

    async def store(
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
        with span(
            tracer,
            "newfuse.task.result",
            trace.SpanKind.PRODUCER,
            lambda: {"newfuse.task_id": task.task_id, "newfuse.result_status": status.value},
        ):
            envelope = encode(
                MessageType.RESULT,
                self._sealed(result.model_dump(mode="json"), RESULT_CLEAR, "result"),
                self.config.agent_id,
                now=now,
                audience=self.queue.keys.audience(Channel.RESULTS),
                signer=self._signing.signer,
                traceparent=current_traceparent() or traceparent,
            )
            stored = await self.persist(
                lambda: self.queue.complete(
                    delivery,
                    task.task_id,
                    envelope,
                    succeeded=succeeded,
                    revision=self.config.revision,
                    executed=executed,
                    letter=letter,
                    events=task.events,
                )
            )
            if isinstance(stored, str):
                stored = await self._replace_if_forged(
                    task.task_id, stored, envelope, succeeded=succeeded, executed=executed
                )
        if not stored:
            if executed:
                metrics.outcome(TaskOutcome.DUPLICATE).inc()
            return
        self.stats.record(elapsed, now, succeeded=succeeded)
        metrics.outcome(TaskOutcome.SUCCEEDED if succeeded else TaskOutcome.FAILED).inc()
        if task.parent is not None:
            # The task a delegation parked waits for this: put it back. A lost notification
            # (this agent dies here, Redis fails) is made good by the parent fleet's sweep.
            child = TaskRef(
                namespace=self.config.namespace, fleet=self.config.fleet, task_id=task.task_id
            )
            with contextlib.suppress(RedisError, OSError):
                await self.waits.resume_if_done(task.parent, child)

    async def _replace_if_forged(
        self, task_id: str, found: str, envelope: bytes, *, succeeded: bool, executed: bool
    ) -> bool:
        """Replace ``found`` by this agent's result unless the fleet's keys signed it."""
        keyring = self._signing.keyring
        if keyring is None:
            return False  # nothing to tell a forgery by: the first result stands
        try:
            verified_result(found, task_id, keyring, self.queue.keys.audience(Channel.RESULTS))
        except MessageRejectedError as exc:
            log.warning(
                "task %s held a result its fleet did not sign (%s): replacing it", task_id, exc
            )
            metrics.REJECTED.labels("forged_result").inc()
            return bool(
                await self.persist(
                    lambda: self.queue.replace_forged(
                        task_id,
                        found,
                        envelope,
                        succeeded=succeeded,
                        revision=self.config.revision,
                        executed=executed,
                    )
                )
            )
        return False

    async def persist(
        self,
        step: Callable[[], Awaitable[Any]],
        permanent: tuple[type[Exception], ...] = (),
    ) -> Any:
        # Finished work is never thrown away for a Redis blip: retry until Redis answers. The entry
        # stays ours meanwhile (nobody else can claim it while Redis is down either). The first try
        # goes without the retry machinery: it is every task's hot path. ``permanent`` errors
        # (a refusal no retry changes) are raised at once.
        try:
            return await step()
        except permanent:
            raise
        except (RedisError, OSError) as exc:
            log.warning("storing an outcome failed (%s), retrying", exc)
        async for attempt in AsyncRetrying(
            retry=retry_if_exception_type((RedisError, OSError))
            & retry_if_not_exception_type(permanent),
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

    async def fail(
        self,
        delivery: Delivery,
        task: TaskPayload,
        verdict: Fail,
        *,
        executed: bool,
        reason: RejectReason | LetterReason | None = None,
        keep: int = RAW_KEPT,
    ) -> None:
        """End a task FAILED: one atomic step stores the result and its dead letter."""
        why = reason or verdict.reason
        metrics.outcome(TaskOutcome.DEAD_LETTERED).inc()
        trace.get_current_span().set_status(trace.StatusCode.ERROR, f"{why}: {verdict.detail}")
        letter = self.letter(delivery, why, verdict.detail, task.task_id, keep)
        await self.store(
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

    async def refuse(self, delivery: Delivery, exc: MessageRejectedError) -> None:
        """A message that is not a runnable task: a dead letter, and a result if it has an id."""
        metrics.REJECTED.labels(exc.reason).inc()
        log.warning("dead-lettered %s: %s", delivery.entry_id, exc)
        task_id = task_id_of(delivery)
        if task_id is None or exc.reason in NO_RESULT_FOR:
            metrics.outcome(TaskOutcome.DEAD_LETTERED).inc()
            letter = self.letter(delivery, exc.reason, exc.detail, task_id, REFUSED_RAW_KEPT)
            await self.queue.dead_letter(delivery, letter, self.config.revision)
            return
        # The client waiting for this id returns at once with the reason, not at its timeout.
        stand_in = TaskPayload(task_id=task_id, handler="-")
        verdict = Fail(FailReason.HANDLER_FAILED, exc.detail)
        await self.fail(
            delivery, stand_in, verdict, executed=False, reason=exc.reason, keep=REFUSED_RAW_KEPT
        )

    async def pass_on(
        self, delivery: Delivery, task: TaskPayload, major: int, others: frozenset[int]
    ) -> None:
        """A task of a major this agent does not speak: to an agent that does, else failed.

        It goes back unchanged (signature and all) through the retry set, so the agent that
        passed it on does not spin on it while it is the only free reader.
        """
        if major in others:
            await self.queue.requeue(
                delivery, task.task_id, delivery.raw, task.priority, PASS_ON_DELAY_SECONDS
            )
            metrics.outcome(TaskOutcome.PASSED_ON).inc()
            return
        detail = (
            f"protocol {major}.x: no live agent of this fleet speaks it (this agent speaks "
            f"{majors_text(self.config.speaks)}; others speak {majors_text(others) or 'nothing'})"
        )
        await self.refuse(delivery, MessageRejectedError(RejectReason.UNSUPPORTED_VERSION, detail))

    def letter(
        self,
        delivery: Delivery,
        reason: RejectReason | FailReason | LetterReason,
        detail: str,
        task_id: str | None,
        keep: int = RAW_KEPT,
    ) -> DeadLetter:
        """The dead letter of ``delivery``, with up to ``keep`` characters of what it held."""
        detail = detail[:2000]
        if self._sealer is not None:  # a handler's error may quote its input
            detail = orjson.dumps(self._sealer.seal(detail, task_id or "", "letter")).decode()
        return DeadLetter(
            reason=reason,
            detail=detail,
            raw=delivery.raw[:keep],
            agent_id=self.config.agent_id,
            source_stream=delivery.stream,
            task_id=task_id,
            attempts=delivery.times_delivered,
            at=self.clock(),
        )

    def _sealed(self, payload: dict[str, Any], clear: frozenset[str], kind: str) -> dict[str, Any]:
        return payload if self._sealer is None else self._sealer.seal_fields(payload, clear, kind)

    def task_envelope(
        self, task: TaskPayload, traceparent: str | None, version: str | None = None
    ) -> bytes:
        """``task`` as a fresh envelope from this agent (signed when the fleet signs).

        ``version`` is the protocol version to stamp (default: the running task's).
        """
        return encode(
            MessageType.TASK,
            self._sealed(task.model_dump(mode="json"), TASK_CLEAR, "task"),
            self.config.agent_id,
            now=self.clock(),
            audience=self.queue.keys.audience(Channel.TASKS),
            signer=self._signing.signer,
            traceparent=traceparent,
            protocol_version=version or TASK_PROTOCOL.get(),
        )

    async def hand_back(
        self, delivery: Delivery, payload: TaskPayload | None, version: str | None = None
    ) -> None:
        """Put an unfinished task back on its stream (a drain), unless it finished meanwhile."""
        if payload is None:
            return  # not even decoded: it stays pending and is reclaimed after the claim bound
        envelope = self.task_envelope(payload, None, version)
        with contextlib.suppress(RedisError, OSError):
            reply = await self.queue.requeue(delivery, payload.task_id, envelope, payload.priority)
            if reply not in ("done", "lost"):
                metrics.outcome(TaskOutcome.HANDED_BACK).inc()
