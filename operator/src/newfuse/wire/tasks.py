"""Tasks and results: the payloads of `task` and `result` envelopes, and the channel names.

Tasks travel on Redis Streams (one per priority) read by one consumer group per fleet, so a task is
never lost: it stays pending until an agent stores its result, and a dead agent's pending tasks are
reclaimed by the others. Results go to a stream too, and to an index keyed by task id.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field

from newfuse.wire.delegation import Delegated, TaskRef, Waiting


class Channel(StrEnum):
    """The three logical channels. Agents get each one's Redis key in the env var of that name."""

    COORDINATION = "AI_COORDINATION_CHANNEL"
    TASK = "AI_TASK_CHANNEL"
    RESULT = "AI_RESULT_CHANNEL"


class Priority(StrEnum):
    """Task priorities, highest first: an agent always drains higher ones before lower."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


PRIORITY_ORDER: Final = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
CONSUMER_GROUP: Final = "agents"


class AttemptRecord(BaseModel):
    """One attempt of a task that did not end it: when it ended, why, and who ran it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    attempt: int = Field(ge=1)
    at: dt.datetime
    error: str = Field(max_length=500)
    agent_id: str = Field(max_length=253)
    retry_in_seconds: float | None = None


class TaskPayload(BaseModel):
    """What to do: a handler name and its input."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    task_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    handler: str = Field(min_length=1, max_length=64)
    input: Any = None
    priority: Priority = Priority.NORMAL
    max_attempts: int = Field(default=3, ge=1, le=20)
    # None: the fleet's default (TaskPolicy.default_timeout_seconds).
    timeout_seconds: float | None = Field(default=None, gt=0, le=86400)
    # Past this instant the task is not started (or retried) any more: a FAILED result, `deadline`.
    deadline: dt.datetime | None = None
    # Failed attempts so far + 1; a delivery lost with its dead owner counts as well (see
    # newfuse.core.tasklife), a hand-back on drain does not.
    attempt: int = Field(default=1, ge=1)
    # Times the task was put off without being tried (the gateway's circuit was open).
    deferrals: int = Field(default=0, ge=0)
    # When each failed attempt ended, and why (newest last): shown in results and `newfuse dlq`.
    history: list[AttemptRecord] = Field(default_factory=list, max_length=64)
    # The fleet API follows this task: agents note each start and the end on its event stream
    # (FleetKeys.a2a_events), which streams and resumes A2A subscriptions.
    events: bool = False
    # Answers to the handler's questions so far (context.request_input), in the order asked: a
    # task resumed after a person answered runs its handler again, and the n-th question of the
    # run returns the n-th answer instead of waiting.
    answers: list[Any] = Field(default_factory=list, max_length=32)
    # Set on the copy of a task that waits for a person: the review whose decision it resumes by.
    review: str | None = Field(default=None, max_length=160)
    # Delegation (newfuse.wire.delegation): how deep in a chain of delegations this task is, the
    # task waiting on it, what its own delegations came to (in the order made), the child its
    # waiting copy waits on, and the cycle a deadlock victim's copy is failed for.
    depth: int = Field(default=0, ge=0, le=64)
    parent: TaskRef | None = None
    delegated: list[list[Delegated | None]] = Field(default_factory=list, max_length=64)
    waiting_on: Waiting | None = None
    deadlock: str | None = Field(default=None, max_length=4000)
    stalled: str | None = Field(default=None, max_length=4000)


class TaskEvent(StrEnum):
    """The `state` field of an entry on a fleet's A2A event stream (`FleetKeys.a2a_events`).

    An entry holds only the task id and this state: what a task produced is read from its
    verified result, never from the event stream, which anybody with Redis access can write to.
    """

    SUBMITTED = "submitted"
    WORKING = "working"
    INPUT_REQUIRED = "input-required"  # waiting for a person (newfuse.wire.review)
    ENDED = "ended"


class ResultStatus(StrEnum):
    """How a task ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ResultPayload(BaseModel):
    """What came of a task, and who did it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    task_id: str
    status: ResultStatus
    output: Any = None
    error: str | None = None
    agent_id: str
    revision: str | None = None
    attempts: int = 1
    latency_ms: float = 0.0
    finished_at: dt.datetime
    # Machine-readable cause of a FAILED result (timeout, deadline, exhausted, a RejectReason...).
    reason: str | None = None
    history: list[AttemptRecord] = Field(default_factory=list)


class FailReason(StrEnum):
    """Why a task ended FAILED (the result's `reason`, the dead letter's reason)."""

    TIMEOUT = "timeout"
    DEADLINE = "deadline"
    EXHAUSTED = "exhausted"
    HANDLER_FAILED = "handler_failed"
    EXPIRED = "expired"
    REJECTED = "rejected"  # a person (or a review's timeout) rejected it: see newfuse.wire.review
    DEADLOCK = "deadlock"  # it waited in a cycle of delegations (newfuse.wire.delegation)
    STALLED = "stalled"  # it waited on a delegated task its fleet never had
    DELEGATION_REFUSED = "delegation_refused"  # too deep a chain, or a fleet it may not call


class LetterReason(StrEnum):
    """Dead-letter reasons that are neither a refusal (RejectReason) nor a FailReason."""

    INJECTED_FAULT = "injected_fault"  # NEWFUSE_FAULT_RATE: a drill, not a handler's failure
    UNREADABLE = "unreadable"  # a DLQ entry that is not a dead letter (shown, never requeued)


class DeadLetter(BaseModel):
    """A message no agent will process, with why; `newfuse dlq` shows and requeues these."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    # A RejectReason, FailReason or LetterReason value. Read as a plain string, so that a reason
    # added by a newer agent still lists in an older CLI.
    reason: str
    detail: str
    raw: str
    agent_id: str
    source_stream: str
    task_id: str | None = None
    attempts: int = 0
    at: dt.datetime
