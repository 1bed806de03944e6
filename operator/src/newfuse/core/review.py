"""Human review's decisions: what a reviewer may decide, what the timeout decides, what resumes.

Pure functions (the Redis steps are newfuse.wire.reviewscripts, the I/O newfuse.adapters.reviews),
so every rule is table-tested:
- a decision must fit the question: an answer only to a handler's question, and valid against the
  schema the handler gave; an edited output only on an output review; a rejection needs a reason;
- the timeout approves, rejects, or escalates once and then rejects;
- a decided review resumes its task: an approved output is stored as the result (the reviewer's
  edit if there is one), an answer runs the handler again with it, a rejection fails the task.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

import jsonschema

from newfuse.wire.review import (
    TIMEOUT_REVIEWER,
    OnTimeout,
    ReviewDecision,
    ReviewKind,
    ReviewRequest,
    ReviewState,
    Verdict,
)


class ReviewRefusedError(ValueError):
    """A decision that does not fit its review, with why (shown to the reviewer as is)."""


class ReviewConflictError(ReviewRefusedError):
    """A decision that came too late: the review is decided already, or its timeout is due."""


def check(request: ReviewRequest, state: ReviewState, decision: ReviewDecision) -> None:
    """Refuse a person's decision that cannot be taken; DECIDE_LUA re-checks state and due time."""
    if not state.open:
        raise ReviewConflictError(f"review {request.id} is already decided: {state.value}")
    if decision.verdict is Verdict.REJECT and not (decision.comment or "").strip():
        raise ReviewRefusedError("a rejection needs a reason (the task fails with it)")
    if decision.verdict is Verdict.ANSWER and request.kind is not ReviewKind.INPUT:
        raise ReviewRefusedError(
            f"review {request.id} holds an output to approve or reject, not a question to answer"
        )
    if decision.edited and request.kind is not ReviewKind.OUTPUT:
        raise ReviewRefusedError(f"review {request.id} is a question: answer it, not edit it")
    if decision.verdict is Verdict.ANSWER and request.answer_schema is not None:
        try:
            jsonschema.validate(decision.answer, request.answer_schema)
        except jsonschema.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path) or "the answer"
            raise ReviewRefusedError(f"{where}: {exc.message}") from None
        except jsonschema.SchemaError as exc:
            raise ReviewRefusedError(f"the question's schema is invalid: {exc.message}") from None


def on_timeout(request: ReviewRequest, state: ReviewState) -> Verdict | None:
    """What the timeout decides for an open review; None: escalate (it stays open once more)."""
    if request.on_timeout is OnTimeout.ESCALATE:
        return None if state is ReviewState.PENDING else Verdict.REJECT
    if request.on_timeout is OnTimeout.APPROVE:
        return Verdict.APPROVE
    return Verdict.REJECT


def timeout_decision(
    request: ReviewRequest, verdict: Verdict | None, now: dt.datetime
) -> ReviewDecision:
    """The decision the timeout writes (the audit log's entry for it)."""
    waited = f"no decision within {request.timeout_seconds:g}s"
    if verdict is None:
        comment = f"{waited}: escalated, rejected after another {request.timeout_seconds:g}s"
    elif request.on_timeout is OnTimeout.ESCALATE:
        comment = f"{waited} after escalation"
    else:
        comment = f"{waited} (onTimeout: {request.on_timeout.value})"
    return ReviewDecision(
        verdict=verdict or Verdict.REJECT,
        reviewer=TIMEOUT_REVIEWER,
        comment=comment,
        decided_at=now,
        timed_out=True,
    )


@dataclass(frozen=True)
class Store:
    """End the task with this output (an approved output review)."""

    output: Any


@dataclass(frozen=True)
class Resume:
    """Run the handler again; its question at this step now gets ``answer``."""

    answer: Any


@dataclass(frozen=True)
class Reject:
    """Fail the task: the reviewer (or the timeout) said no."""

    detail: str


def resumption(request: ReviewRequest, decision: ReviewDecision) -> Store | Resume | Reject:
    """What a decided review does to its task."""
    if decision.verdict is Verdict.REJECT:
        by = "the review timed out" if decision.timed_out else f"rejected by {decision.reviewer}"
        return Reject(f"{by}: {decision.comment}" if decision.comment else by)
    if request.kind is ReviewKind.OUTPUT:
        return Store(decision.answer if decision.edited else request.output)
    return Resume(decision.answer)
