"""A fleet's review records in Redis: park a task, list and show reviews, decide, apply timeouts.

One store for everyone who touches reviews: the agent parks tasks and applies timeouts, the CLI and
the gateway list and decide. Every state change is one Lua step (newfuse.wire.reviewscripts); this
module reads, writes JSON and turns the scripts' replies into errors a reviewer can act on.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

import redis.asyncio as aioredis
from pydantic import ValidationError

from newfuse.core import review as policy
from newfuse.core.review import ReviewConflictError, ReviewRefusedError
from newfuse.wire.keys import FleetKeys
from newfuse.wire.review import Feedback, Review, ReviewDecision, ReviewRequest, ReviewState
from newfuse.wire.reviewscripts import DECIDE_LUA, EXPIRED, NOT_DUE, PARK_LUA, UNKNOWN
from newfuse.wire.tasks import PRIORITY_ORDER

REVIEW_LOG_MAX: Final = 100_000
DEFAULT_RECORD_TTL_SECONDS: Final = 86400.0


class ReviewNotFoundError(LookupError):
    """No such review (never asked, or decided longer ago than the fleet keeps results)."""


class ReviewStore:
    """The review records of one fleet, through a decoded async Redis client."""

    def __init__(self, client: aioredis.Redis, keys: FleetKeys, ttl_seconds: float | None = None):
        """Decided records are kept ``ttl_seconds`` (the fleet's result ttl)."""
        self.client, self.keys = client, keys
        self.ttl_ms = round((ttl_seconds or DEFAULT_RECORD_TTL_SECONDS) * 1000)
        self._park = client.register_script(PARK_LUA)
        self._decide = client.register_script(DECIDE_LUA)

    async def park(
        self,
        request: ReviewRequest,
        resume: tuple[str, bytes],
        *,
        stream: str,
        group: str,
        entry_id: str,
        consumer: str,
        events: bool,
        events_max: int,
    ) -> str:
        """Record ``request`` and take its task off ``stream``: PARKED, LOST or DONE."""
        k = self.keys
        keys = [k.reviews, k.review_states, k.review_due, k.review_resume, stream, k.counters]
        keys += [k.result_index, *([k.a2a_events] if events else [])]
        priority, envelope = resume
        member = priority.encode() + b"\n" + request.task_id.encode() + b"\n" + envelope
        timeout_ms = round(request.timeout_seconds * 1000)
        args: list[Any] = [request.id, request.model_dump_json(), timeout_ms, member, group]
        args += [entry_id, consumer, request.task_id, events_max]
        return str(await self._park(keys, args))

    async def get(self, review_id: str) -> Review:
        """One review; ReviewNotFoundError if there is none."""
        pipe = self.client.pipeline(transaction=False)
        pipe.hget(self.keys.reviews, review_id)
        pipe.hget(self.keys.review_states, review_id)
        pipe.hget(self.keys.review_decisions, review_id)
        pipe.zscore(self.keys.review_due, review_id)
        raw, state, decision, due = await pipe.execute()
        if raw is None or state is None:
            raise ReviewNotFoundError(
                f"no review {review_id!r} in {self.keys.namespace}/{self.keys.fleet}"
            )
        return Review(
            request=ReviewRequest.model_validate_json(raw),
            state=ReviewState(state),
            decision=ReviewDecision.model_validate_json(decision) if decision else None,
            due=dt.datetime.fromtimestamp(due / 1000, dt.UTC) if due is not None else None,
        )

    async def open_reviews(self, limit: int = 200) -> list[Review]:
        """The open reviews, the soonest due first (unreadable records are skipped)."""
        ids: list[str] = await self.client.zrange(self.keys.review_due, 0, limit - 1)  # type: ignore[assignment]
        found = []
        for review_id in ids:
            try:
                found.append(await self.get(review_id))
            except (ReviewNotFoundError, ValidationError, ValueError):
                continue
        return found

    async def pending_count(self) -> int:
        """How many reviews are open (the review queue's depth)."""
        return int(await self.client.zcard(self.keys.review_due))

    async def due(self, limit: int = 100) -> list[str]:
        """Ids of open reviews whose timeout has come (by Redis' clock)."""
        seconds, micros = await self.client.time()
        now_ms = seconds * 1000 + micros // 1000
        due = await self.client.zrangebyscore(self.keys.review_due, "-inf", now_ms, 0, limit)
        return [str(review_id) for review_id in due]

    async def decide(self, review_id: str, decision: ReviewDecision) -> ReviewState:
        """A person's decision: checked against the request, then taken once, atomically."""
        review = await self.get(review_id)
        policy.check(review.request, review.state, decision)
        return await self._apply(review_id, decision.verdict.state.value, decision, timeout=False)

    async def apply_timeout(self, review_id: str, now: dt.datetime) -> ReviewState | None:
        """Apply the timeout of a due review; None if somebody else decided it first."""
        review = await self.get(review_id)
        if not review.state.open:
            return None
        verdict = policy.on_timeout(review.request, review.state)
        decision = policy.timeout_decision(review.request, verdict, now)
        state = ReviewState.ESCALATED if verdict is None else verdict.state
        try:
            return await self._apply(review_id, state.value, decision, timeout=True)
        except ReviewRefusedError:
            return None

    async def _apply(
        self, review_id: str, state: str, decision: ReviewDecision, *, timeout: bool
    ) -> ReviewState:
        k = self.keys
        hashes = (k.reviews, k.review_states, k.review_decisions, k.review_resume)
        keys = [k.review_states, k.review_decisions, k.review_due, k.review_resume, k.reviews]
        keys += [k.review_log, k.counters, k.task_index, k.result_index]
        keys += [k.expiry_of(h) for h in hashes] + [k.tasks(p) for p in PRIORITY_ORDER]
        escalate_ms = 0
        if state == ReviewState.ESCALATED.value:
            escalate_ms = round((await self.get(review_id)).request.timeout_seconds * 1000)
        args: list[Any] = [review_id, state, decision.model_dump_json(), int(timeout), self.ttl_ms]
        args += [REVIEW_LOG_MAX, escalate_ms, decision.reviewer, *PRIORITY_ORDER]
        done, why = await self._decide(keys, args)
        if int(done) == 1:
            return ReviewState(why)
        raise ReviewConflictError(_refusal(review_id, str(why)))

    async def feedback(
        self, *, revision: str | None = None, since: str = "-", limit: int = 1000
    ) -> list[Feedback]:
        """Decisions in the order taken, of one revision's outputs if given (timeouts included)."""
        rows = []
        entries: list[tuple[str, dict[str, str]]] = await self.client.xrange(  # type: ignore[assignment]
            self.keys.review_log, since, "+", limit
        )
        for entry_id, fields in entries:
            try:
                decision = ReviewDecision.model_validate_json(fields.get("decision", ""))
                raw = fields.get("request")
                request = ReviewRequest.model_validate_json(raw) if raw else None
            except ValidationError:
                continue
            if revision is not None and (request is None or request.revision != revision):
                continue
            state = fields.get("state", "")
            rows.append(
                Feedback(entry_id=entry_id, state=state, decision=decision, request=request)
            )
        return rows


def _refusal(review_id: str, why: str) -> str:
    if why == UNKNOWN:
        return f"no review {review_id!r}"
    if why == EXPIRED:
        return f"review {review_id} expired: its timeout applies, not this decision"
    if why == NOT_DUE:
        return f"review {review_id} is not due yet"
    return f"review {review_id} is already decided: {why}"
