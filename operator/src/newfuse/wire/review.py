"""Human review: the fleet's review policy, a review request, a reviewer's decision.

A task waits for a person in two ways, both as the A2A state `input-required`:
- its handler asked a question (`await context.request_input(question, schema)`): the answer
  resumes the task, whose handler runs again from the start and gets the answer from the same call
  (the replay model of LangGraph's `interrupt`; handlers keep side effects after their questions);
- the fleet's policy (`spec.review`) holds a handler's output for approval: approving stores the
  output (or the reviewer's edit) as the result, rejecting fails the task with the reason given.

Either way the task leaves the stream while it waits: no agent slot and no claim is held, however
long the person takes. The request, its state and its decision are records in Redis (key layout in
`newfuse.wire.keys.FleetKeys`); a decision is taken once, atomically (DECIDE_LUA), whoever takes it:
a reviewer through the CLI or the gateway, or an agent applying the timeout.

The operator gives agents the policy as one JSON environment variable (AgentEnv.REVIEW_POLICY).
"""

from __future__ import annotations

import datetime as dt
import hashlib
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

# A Kubernetes subresource name no built-in uses: RBAC rules grant reviewers `update` (decide) and
# `get` (see the queue) on `newfuseagents/reviews`, and the gateway and CLI ask a
# SubjectAccessReview for exactly that.
REVIEW_SUBRESOURCE: Final = "reviews"
DEFAULT_REVIEW_TIMEOUT_SECONDS: Final = 86400.0


class OnTimeout(StrEnum):
    """What a review nobody decided in time becomes."""

    APPROVE = "approve"
    REJECT = "reject"
    # Stays open, marked escalated (an Event-worthy counter), for one more timeout; then rejected.
    ESCALATE = "escalate"


class ReviewKind(StrEnum):
    """What the person is asked."""

    OUTPUT = "output"  # approve, reject or edit a handler's output (spec.review)
    INPUT = "input"  # answer a handler's question (context.request_input)


class ReviewState(StrEnum):
    """Where a review stands; every state but PENDING and ESCALATED is final."""

    PENDING = "pending"
    ESCALATED = "escalated"
    APPROVED = "approved"
    REJECTED = "rejected"
    ANSWERED = "answered"

    @property
    def open(self) -> bool:
        """Still waiting for a decision."""
        return self in (ReviewState.PENDING, ReviewState.ESCALATED)


class Verdict(StrEnum):
    """What a reviewer (or the timeout) decides."""

    APPROVE = "approve"
    REJECT = "reject"
    ANSWER = "answer"

    @property
    def state(self) -> ReviewState:
        """The final state this verdict leads to."""
        return {
            Verdict.APPROVE: ReviewState.APPROVED,
            Verdict.REJECT: ReviewState.REJECTED,
            Verdict.ANSWER: ReviewState.ANSWERED,
        }[self]


# Who decided when nobody did in time (the decision's `reviewer`).
TIMEOUT_REVIEWER: Final = "system:timeout"


class ReviewPolicy(BaseModel):
    """Which outputs wait for a person (`spec.review`), and for how long."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    handlers: tuple[str, ...] = ()
    sample_percent: float = Field(default=100.0, ge=0, le=100)
    timeout_seconds: float = Field(default=DEFAULT_REVIEW_TIMEOUT_SECONDS, gt=0, le=30 * 86400)
    on_timeout: OnTimeout = OnTimeout.REJECT

    def holds(self, handler: str, task_id: str) -> bool:
        """Whether this task's output waits for review.

        The sample is a hash of the task id, not a coin toss: every attempt and every agent agree
        on whether one task is reviewed.
        """
        if handler not in self.handlers or self.sample_percent <= 0:
            return False
        digest = hashlib.sha256(task_id.encode()).digest()
        return int.from_bytes(digest[:4], "big") % 10000 < self.sample_percent * 100


class ReviewRequest(BaseModel):
    """A question put to a person: what the reviewers see. Written once, when the task waits."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1, max_length=160)
    task_id: str
    kind: ReviewKind
    handler: str
    revision: str | None = None
    agent_id: str
    input: Any = None
    # OUTPUT: the output awaiting approval. INPUT: the question and the JSON schema of its answer.
    output: Any = None
    question: str | None = None
    answer_schema: dict[str, Any] | None = None
    created_at: dt.datetime
    # How long the handler ran before it asked (OUTPUT: the result's latency once approved).
    handler_seconds: float = 0.0
    timeout_seconds: float
    on_timeout: OnTimeout


class ReviewDecision(BaseModel):
    """A decision on a review: the audit log's entry and the feedback dataset's record."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    verdict: Verdict
    reviewer: str = Field(min_length=1, max_length=253)
    comment: str | None = Field(default=None, max_length=4000)
    # ANSWER: the answer to the question. APPROVE of an output: an edited output, if any.
    answer: Any = None
    edited: bool = False
    decided_at: dt.datetime
    # The timeout decided, not a person.
    timed_out: bool = False


def review_id(task_id: str, kind: ReviewKind, step: int) -> str:
    """The id of a task's ``step``-th review: the same for every attempt that reaches it.

    A task that asks twice, or asks and then has its output reviewed, has one review per step.
    """
    return f"{task_id}.{kind.value}.{step}"


class Review(BaseModel):
    """A review as a reviewer sees it (the gateway's JSON, the CLI's rows)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    request: ReviewRequest
    state: ReviewState
    decision: ReviewDecision | None = None
    # When the timeout applies (open reviews only).
    due: dt.datetime | None = None


class Feedback(BaseModel):
    """One decision of the audit log, with what it decided on (a row of the feedback dataset)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    entry_id: str
    state: str
    decision: ReviewDecision
    request: ReviewRequest | None = None
