"""The task-lifecycle policy: when a delivery runs, when a failure is retried and how long it waits.

Pure decisions, apart from the agent's Redis I/O, so every rule is table-tested:
- attempts: a failed attempt counts, and so does a delivery whose owner died holding it (it may be
  a poison message that kills agents); a hand-back on drain and a deferral do not;
- deadlines: a task past its own deadline is not started or retried; it fails with `deadline`;
- timeouts: a task that runs past its timeout fails with `timeout` and is not retried (running it
  again would most likely time out again and spend twice the model budget);
- retries wait exponential backoff with jitter, at least as long as the gateway asked
  (Retry-After, or the circuit breaker's time to half-open), and never longer than the cap;
- a call refused by an open circuit never reached the gateway: it is deferred, not failed, up to
  MAX_DEFERRALS times.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Final

from newfuse.wire.taskpolicy import TaskPolicy
from newfuse.wire.tasks import AttemptRecord, FailReason, TaskPayload

MAX_DEFERRALS: Final = 50
HISTORY_KEPT: Final = 20


@dataclass(frozen=True)
class Failure:
    """What a handler's failure said about itself."""

    error: str
    retryable: bool = True
    retry_after: float | None = None
    counts_as_attempt: bool = True
    timed_out: bool = False


@dataclass(frozen=True)
class Run:
    """Start the handler."""

    timeout_seconds: float


@dataclass(frozen=True)
class Fail:
    """End the task with a FAILED result (and a dead letter)."""

    reason: FailReason
    detail: str


@dataclass(frozen=True)
class Retry:
    """Put the task aside and run it again after ``delay_seconds``, as ``task``."""

    delay_seconds: float
    task: TaskPayload


def attempts_used(task: TaskPayload, times_delivered: int) -> int:
    """Attempts spent so far, this one included.

    `task.attempt` counts failed attempts (it grows with each retry); each redelivery of the same
    stream entry means the previous owner died holding it, which counts too.
    """
    return task.attempt + max(0, times_delivered - 1)


def on_delivery(
    task: TaskPayload, times_delivered: int, now: dt.datetime, policy: TaskPolicy
) -> Run | Fail:
    """Decide whether a delivered task runs."""
    if task.deadline is not None and now >= _aware(task.deadline):
        return Fail(FailReason.DEADLINE, f"deadline {task.deadline.isoformat()} passed")
    used = attempts_used(task, times_delivered)
    if used > task.max_attempts:
        return Fail(
            FailReason.EXHAUSTED,
            f"attempt {used} of at most {task.max_attempts}: earlier owners died holding it "
            "(an agent may crash on it)",
        )
    return Run(effective_timeout(task, policy))


def effective_timeout(task: TaskPayload, policy: TaskPolicy) -> float:
    """The task's own timeout, else the fleet's default."""
    return (
        task.timeout_seconds
        if task.timeout_seconds is not None
        else (policy.default_timeout_seconds)
    )


def on_failure(
    task: TaskPayload,
    failure: Failure,
    *,
    now: dt.datetime,
    agent_id: str,
    policy: TaskPolicy,
    jitter: float,
) -> Retry | Fail:
    """Decide what a failed attempt leads to; ``jitter`` is a uniform random number in [0, 1)."""
    if failure.timed_out:
        return Fail(FailReason.TIMEOUT, failure.error)
    if not failure.retryable:
        return Fail(FailReason.HANDLER_FAILED, failure.error)
    deferral = not failure.counts_as_attempt and task.deferrals < MAX_DEFERRALS
    if not deferral and task.attempt >= task.max_attempts:
        return Fail(
            FailReason.HANDLER_FAILED,
            f"{failure.error} (attempt {task.attempt} of {task.max_attempts})",
        )
    delay = retry_delay(task.attempt, policy, failure.retry_after, jitter)
    if task.deadline is not None and now + dt.timedelta(seconds=delay) >= _aware(task.deadline):
        return Fail(
            FailReason.DEADLINE,
            f"{failure.error}; a retry in {delay:.1f}s would start after the deadline "
            f"{task.deadline.isoformat()}",
        )
    record = AttemptRecord(
        attempt=task.attempt,
        at=now,
        error=failure.error[:500],
        agent_id=agent_id,
        retry_in_seconds=round(delay, 3),
    )
    history = [*task.history, record][-HISTORY_KEPT:]
    if deferral:
        update = {"deferrals": task.deferrals + 1, "history": history}
    else:
        update = {"attempt": task.attempt + 1, "history": history}
    return Retry(delay, task.model_copy(update=update))


def retry_delay(
    attempt: int, policy: TaskPolicy, retry_after: float | None, jitter: float
) -> float:
    """Exponential backoff with "equal jitter", at least ``retry_after``, at most the cap.

    Equal jitter (half fixed, half random) spreads a burst of failures that happened together
    without ever retrying sooner than half the backoff; a server's Retry-After gets 0-10 % on top,
    so tasks told to come back at the same instant do not all arrive in the same millisecond.
    """
    exponential = min(policy.retry_max_seconds, policy.retry_base_seconds * 2 ** (attempt - 1))
    delay = exponential / 2 + jitter * exponential / 2
    if retry_after is not None and retry_after > 0:
        delay = max(delay, retry_after * (1 + 0.1 * jitter))
    return float(min(policy.retry_max_seconds, delay))


def is_expired(timestamp: dt.datetime, now: dt.datetime, policy: TaskPolicy) -> bool:
    """A signed task older than the replay guard's memory: a replay could not be told apart."""
    return now - _aware(timestamp) > dt.timedelta(seconds=policy.result_ttl_seconds)


def _aware(moment: dt.datetime) -> dt.datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=dt.UTC)
