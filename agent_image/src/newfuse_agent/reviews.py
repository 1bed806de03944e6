"""The agent's side of human review: park a task for a person, resume it once decided, time out.

A parked task is off its stream and holds no slot: the handler's run ended. What it resumes by is a
copy of the task, signed by this agent, that names its review (`TaskPayload.review`); DECIDE_LUA
puts it back on its stream once a person (or the timeout) decided, and whichever agent takes it
reads the decision: store the approved output, run the handler again with the answer, or fail the
task with the reviewer's reason. The rules are newfuse.core.review's.
"""

from __future__ import annotations

import logging
from typing import Any

from newfuse.adapters.reviews import ReviewNotFoundError, ReviewStore
from newfuse.core import review as rules
from newfuse.core.tasklife import Fail
from newfuse.wire.review import ReviewKind, ReviewRequest, review_id
from newfuse.wire.reviewscripts import DECIDED, LOST
from newfuse.wire.tasks import CONSUMER_GROUP, FailReason, ResultStatus, TaskPayload
from newfuse_agent import metrics
from newfuse_agent.config import AgentConfig
from newfuse_agent.contract import InputRequired
from newfuse_agent.metrics import TaskOutcome
from newfuse_agent.outcomes import Outcomes
from newfuse_agent.queue import Delivery

log = logging.getLogger("newfuse_agent")


class Reviews:
    """Parks, resumes and times out one fleet's reviews for one agent."""

    def __init__(self, config: AgentConfig, store: ReviewStore, out: Outcomes) -> None:
        """Write through ``store``; end tasks through ``out``."""
        self.config, self.store, self.out = config, store, out
        self.policy = config.review

    def holds(self, task: TaskPayload) -> bool:
        """Whether this task's output waits for a person (spec.review)."""
        return self.policy.holds(task.handler, task.task_id)

    async def park_output(
        self, delivery: Delivery, task: TaskPayload, output: Any, elapsed: float, trace: str | None
    ) -> None:
        """Hold a handler's output for approval."""
        request = self._request(task, ReviewKind.OUTPUT, 0, output=output, elapsed=elapsed)
        await self._park(delivery, task, request, trace)

    async def park_question(
        self, delivery: Delivery, task: TaskPayload, asked: InputRequired, trace: str | None
    ) -> None:
        """Put a handler's question to a person."""
        request = self._request(
            task,
            ReviewKind.INPUT,
            len(task.answers),
            question=asked.question[:4000],
            answer_schema=asked.schema,
        )
        await self._park(delivery, task, request, trace)

    def _request(
        self, task: TaskPayload, kind: ReviewKind, step: int, **what: Any
    ) -> ReviewRequest:
        elapsed = what.pop("elapsed", 0.0)
        return ReviewRequest(
            id=review_id(task.task_id, kind, step),
            task_id=task.task_id,
            kind=kind,
            handler=task.handler,
            revision=self.config.revision,
            agent_id=self.config.agent_id,
            input=task.input,
            created_at=self.out.clock(),
            timeout_seconds=self.policy.timeout_seconds,
            on_timeout=self.policy.on_timeout,
            handler_seconds=round(elapsed, 3),
            **what,
        )

    async def _park(
        self, delivery: Delivery, task: TaskPayload, request: ReviewRequest, trace: str | None
    ) -> None:
        waiting = task.model_copy(update={"review": request.id})
        envelope = self.out.task_envelope(waiting, trace)
        reply = await self.out.persist(
            lambda: self.store.park(
                request,
                (task.priority.value, envelope),
                stream=delivery.stream,
                group=CONSUMER_GROUP,
                entry_id=delivery.entry_id,
                consumer=self.config.consumer,
                events=task.events,
                events_max=self.config.tasks.result_stream_max,
            )
        )
        if reply == LOST:
            metrics.outcome(TaskOutcome.LEASE_LOST).inc()
        elif reply == DECIDED:  # reached again after its decision (a hand-back of an old copy)
            await self.resume(delivery, waiting, trace)
        else:
            metrics.outcome(TaskOutcome.AWAITING_REVIEW).inc()
            log.info("task %s waits for review %s", task.task_id, request.id)

    async def resume(
        self, delivery: Delivery, task: TaskPayload, trace: str | None
    ) -> TaskPayload | None:
        """End a task whose review is decided, or return the task to run (with the answer)."""
        assert task.review is not None
        try:
            review = await self.store.get(task.review)
        except ReviewNotFoundError:
            detail = f"review {task.review} is gone (decided longer ago than results are kept)"
            await self.out.fail(delivery, task, Fail(FailReason.REJECTED, detail), executed=False)
            return None
        if review.decision is None or review.request.task_id != task.task_id:
            # Only a forged or hand-made entry gets here (undecided, or another task's review):
            # drop it (acknowledge, no result); the real resumption comes with the decision.
            log.warning("task %s resumed before review %s was decided", task.task_id, task.review)
            await self.out.queue.complete(
                delivery, task.task_id, b"", succeeded=False, revision="", executed=False
            )
            return None
        metrics.REVIEW_SECONDS.observe(
            max(0.0, (review.decision.decided_at - review.request.created_at).total_seconds())
        )
        outcome = rules.resumption(review.request, review.decision)
        if isinstance(outcome, rules.Reject):
            fail = Fail(FailReason.REJECTED, outcome.detail)
            await self.out.fail(delivery, task, fail, executed=False)
            return None
        if isinstance(outcome, rules.Store):
            await self.out.store(
                delivery,
                task,
                ResultStatus.SUCCEEDED,
                outcome.output,
                review.request.handler_seconds,
                trace,
                executed=False,  # the handler ran before the review; nothing ran now
            )
            return None
        return task.model_copy(update={"answers": [*task.answers, outcome.answer], "review": None})

    async def apply_timeouts(self) -> int:
        """Apply the timeouts that came due; several agents racing for one apply it once."""
        applied = 0
        for due in await self.store.due():
            if await self.store.apply_timeout(due, self.out.clock()) is not None:
                applied += 1
                metrics.REVIEWS_TIMED_OUT.inc()
        metrics.REVIEWS_PENDING.set(await self.store.pending_count())
        return applied
