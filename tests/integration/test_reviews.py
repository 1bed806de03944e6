"""Human review against the real Redis: tasks wait without a slot and resume once decided.

Agents run in this process (tests/runtime_fleet.py) with short review timeouts; the e2e suite
runs the operator's agents with a fleet's spec.review.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from newfuse.adapters.reviews import ReviewStore
from newfuse.adapters.taskclient import TaskSpec
from newfuse.core.review import ReviewConflictError, ReviewRefusedError
from newfuse.wire.review import OnTimeout, ReviewDecision, ReviewPolicy, ReviewState, Verdict
from newfuse.wire.reviewscripts import COUNTER_REVIEWS_TIMED_OUT
from newfuse_agent.handlers import TaskContext
from newfuse_agent.handlers.ask import ask
from newfuse_agent.handlers.echo import echo
from runtime_fleet import Fleet, eventually, with_fleet

REVIEWED = ReviewPolicy(handlers=("echo",), timeout_seconds=3600)


def _store(fleet: Fleet) -> ReviewStore:
    return ReviewStore(fleet.redis, fleet.client.keys)


async def _open(fleet: Fleet, n: int) -> list[Any]:
    reviews = await _store(fleet).open_reviews()
    return reviews if len(reviews) >= n else []


async def _reviews(fleet: Fleet, n: int, timeout: float = 20) -> list[Any]:
    found: list[Any] = []

    async def enough() -> bool:
        found[:] = await _open(fleet, n)
        return bool(found)

    await eventually(enough, timeout, f"{n} open reviews")
    return found


def _decision(verdict: Verdict, **fields: Any) -> ReviewDecision:
    return ReviewDecision(
        verdict=verdict, reviewer="alice", decided_at=dt.datetime.now(dt.UTC), **fields
    )


async def _result(fleet: Fleet, task_id: str, timeout: float = 20) -> Any:
    return await fleet.client.wait(task_id, timeout)


def test_a_reviewed_output_waits_without_a_slot_and_an_edit_becomes_the_result(
    fleet_url: str,
) -> None:
    async def body(fleet: Fleet) -> None:
        handlers = {"echo": echo, "other": echo}
        async with fleet.agent("solo", handlers=handlers, concurrency=1, review=REVIEWED):
            held = await fleet.client.submit(TaskSpec("echo", "draft"))
            [review] = await _reviews(fleet, 1)
            assert review.request.output == "draft"
            assert review.state is ReviewState.PENDING
            # Concurrency 1 and a task waiting: the one slot still serves the rest.
            others = [await fleet.client.submit(TaskSpec("other", i)) for i in range(5)]
            outputs = [(await _result(fleet, other.task_id, 10)).output for other in others]
            assert outputs == list(range(5))
            assert await fleet.client.result(held.task_id) is None, "still waiting for review"
            decision = _decision(Verdict.APPROVE, answer="final", edited=True, comment="tighter")
            assert await _store(fleet).decide(review.request.id, decision) is ReviewState.APPROVED
            result = await _result(fleet, held.task_id)
        assert result.status.value == "succeeded"
        assert result.output == "final"
        with pytest.raises(ReviewConflictError, match="already decided: approved"):
            await _store(fleet).decide(review.request.id, _decision(Verdict.REJECT, comment="x"))
        [row] = await _store(fleet).feedback(revision="r1")
        assert row.request is not None
        assert row.request.output == "draft"
        assert row.decision.answer == "final"
        assert row.decision.comment == "tighter"

    with_fleet(fleet_url, body)


def test_a_rejection_fails_the_task_with_the_reviewers_reason(fleet_url: str) -> None:
    async def body(fleet: Fleet) -> None:
        async with fleet.agent("solo", review=REVIEWED):
            held = await fleet.client.submit(TaskSpec("echo", "draft"))
            [review] = await _reviews(fleet, 1)
            with pytest.raises(ReviewRefusedError, match="needs a reason"):
                await _store(fleet).decide(review.request.id, _decision(Verdict.REJECT))
            with pytest.raises(ReviewRefusedError, match="not a question"):
                await _store(fleet).decide(review.request.id, _decision(Verdict.ANSWER, answer=1))
            rejected = _decision(Verdict.REJECT, comment="cites no source")
            await _store(fleet).decide(review.request.id, rejected)
            result = await _result(fleet, held.task_id)
        assert result.status.value == "failed"
        assert result.reason == "rejected"
        assert "rejected by alice: cites no source" in (result.error or "")

    with_fleet(fleet_url, body)


def test_a_handlers_questions_are_answered_in_turn_and_answers_are_checked(
    fleet_url: str,
) -> None:
    async def twice(payload: Any, context: TaskContext) -> Any:
        first = await context.request_input("which topic?", {"type": "string"})
        second = await context.request_input(f"how long on {first}?", {"type": "integer"})
        return {"topic": first, "words": second}

    async def body(fleet: Fleet) -> None:
        async with fleet.agent("solo", handlers={"plan": twice, "ask": ask}):
            task = await fleet.client.submit(TaskSpec("plan", None))
            [first] = await _reviews(fleet, 1)
            assert first.request.question == "which topic?"
            with pytest.raises(ReviewRefusedError, match="is not of type 'string'"):
                await _store(fleet).decide(first.request.id, _decision(Verdict.ANSWER, answer=3))
            await _store(fleet).decide(first.request.id, _decision(Verdict.ANSWER, answer="tea"))
            await eventually(
                lambda: _second_asked(fleet, "how long on tea?"), 20, "the second question"
            )
            [second] = await _store(fleet).open_reviews()
            await _store(fleet).decide(second.request.id, _decision(Verdict.ANSWER, answer=300))
            result = await _result(fleet, task.task_id)
        assert result.output == {"topic": "tea", "words": 300}

    with_fleet(fleet_url, body)


async def _second_asked(fleet: Fleet, question: str) -> bool:
    return any(r.request.question == question for r in await _store(fleet).open_reviews())


def test_a_timeout_raced_by_three_agents_applies_once(fleet_url: str) -> None:
    policy = ReviewPolicy(handlers=("echo",), timeout_seconds=2, on_timeout=OnTimeout.REJECT)

    async def body(fleet: Fleet) -> None:
        async with (
            fleet.agent("a-0", review=policy),
            fleet.agent("a-1", review=policy),
            fleet.agent("a-2", review=policy),
        ):
            tasks = [await fleet.client.submit(TaskSpec("echo", i)) for i in range(10)]
            results = [await _result(fleet, t.task_id, 30) for t in tasks]
        assert all(r.reason == "rejected" and "timed out" in (r.error or "") for r in results)
        counters = await fleet.redis.hgetall(fleet.client.keys.counters)
        assert int(counters[COUNTER_REVIEWS_TIMED_OUT]) == 10
        rows = await _store(fleet).feedback()
        assert len(rows) == 10
        assert {row.decision.reviewer for row in rows} == {"system:timeout"}
        assert len(await fleet.results()) == 10, "one result per task"

    with_fleet(fleet_url, body)


def test_a_decision_after_the_due_time_is_refused_and_the_timeout_applies(
    fleet_url: str,
) -> None:
    policy = ReviewPolicy(handlers=("echo",), timeout_seconds=1, on_timeout=OnTimeout.APPROVE)

    async def body(fleet: Fleet) -> None:
        async with fleet.agent("parker", review=policy):
            task = await fleet.client.submit(TaskSpec("echo", "late"))
            [review] = await _reviews(fleet, 1)
        # No agent runs: nobody applies the timeout, yet the person is too late.
        assert review.due is not None
        await eventually(lambda: _redis_past(fleet, review.due), 10, "the review's due time")
        with pytest.raises(ReviewConflictError, match="expired"):
            await _store(fleet).decide(review.request.id, _decision(Verdict.REJECT, comment="no"))
        async with fleet.agent("sweeper", review=policy):
            result = await _result(fleet, task.task_id)
        assert result.status.value == "succeeded"
        assert result.output == "late"

    with_fleet(fleet_url, body)


def test_escalation_keeps_a_review_open_for_one_more_timeout_then_rejects(
    fleet_url: str,
) -> None:
    policy = ReviewPolicy(handlers=("echo",), timeout_seconds=1, on_timeout=OnTimeout.ESCALATE)

    async def body(fleet: Fleet) -> None:
        async with fleet.agent("solo", review=policy):
            task = await fleet.client.submit(TaskSpec("echo", "x"))
            [review] = await _reviews(fleet, 1)
            await eventually(
                lambda: _state_is(fleet, review.request.id, ReviewState.ESCALATED), 10, "escalated"
            )
            result = await _result(fleet, task.task_id)
        assert result.reason == "rejected"
        assert "after escalation" in (result.error or "")
        states = [row.state for row in await _store(fleet).feedback()]
        assert states == ["escalated", "rejected"]

    with_fleet(fleet_url, body)


async def _redis_past(fleet: Fleet, due: dt.datetime) -> bool:
    seconds, micros = await fleet.redis.time()
    return dt.datetime.fromtimestamp(seconds + micros / 1e6, dt.UTC) > due


async def _state_is(fleet: Fleet, review_id: str, state: ReviewState) -> bool:
    return (await _store(fleet).get(review_id)).state is state
