"""The task-lifecycle policy, table by table: attempts, deadlines, timeouts, retries and backoff."""

from __future__ import annotations

import datetime as dt

import pytest

from newfuse.core import tasklife
from newfuse.core.tasklife import Fail, Failure, Retry, Run
from newfuse.wire.taskpolicy import ENV_VARS, TaskPolicy
from newfuse.wire.tasks import FailReason, TaskPayload

NOW = dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC)
POLICY = TaskPolicy()


def task(**fields: object) -> TaskPayload:
    return TaskPayload.model_validate({"task_id": "t1", "handler": "echo", **fields})


@pytest.mark.parametrize(
    ("fields", "times_delivered", "expected"),
    [
        ({}, 1, Run(600.0)),
        ({"timeout_seconds": 150}, 1, Run(150.0)),
        # An owner that died holding it counts as an attempt: 1 failed + 1 lost = 2 of 3.
        ({"attempt": 2}, 2, Run(600.0)),
        ({"attempt": 3}, 2, FailReason.EXHAUSTED),
        ({"max_attempts": 1}, 2, FailReason.EXHAUSTED),
        ({"max_attempts": 3}, 3, Run(600.0)),
        ({"max_attempts": 3}, 4, FailReason.EXHAUSTED),
        ({"deadline": NOW - dt.timedelta(seconds=1)}, 1, FailReason.DEADLINE),
        ({"deadline": NOW}, 1, FailReason.DEADLINE),
        ({"deadline": NOW + dt.timedelta(seconds=1)}, 1, Run(600.0)),
        # A naive deadline is read as UTC.
        ({"deadline": "2026-11-30T11:00:00"}, 1, FailReason.DEADLINE),
    ],
)
def test_on_delivery(fields: dict[str, object], times_delivered: int, expected: object) -> None:
    verdict = tasklife.on_delivery(task(**fields), times_delivered, NOW, POLICY)
    if isinstance(expected, FailReason):
        assert isinstance(verdict, Fail)
        assert verdict.reason is expected
    else:
        assert verdict == expected


def test_the_fleet_default_timeout_applies_when_the_task_sets_none() -> None:
    policy = TaskPolicy(default_timeout_seconds=42)
    assert tasklife.on_delivery(task(), 1, NOW, policy) == Run(42.0)


def decide(failure: Failure, fields: dict[str, object]) -> Retry | Fail:
    return tasklife.on_failure(
        task(**fields), failure, now=NOW, agent_id="a-0", policy=POLICY, jitter=0.5
    )


@pytest.mark.parametrize(
    ("failure", "fields", "expected"),
    [
        (Failure("slow", timed_out=True), {}, FailReason.TIMEOUT),
        (Failure("bad input", retryable=False), {}, FailReason.HANDLER_FAILED),
        (Failure("503"), {"attempt": 3, "max_attempts": 3}, FailReason.HANDLER_FAILED),
        (Failure("503"), {"attempt": 2, "max_attempts": 3}, "retry"),
        # The circuit refused it without trying: deferred even on the last attempt.
        (Failure("open", counts_as_attempt=False), {"attempt": 3, "max_attempts": 3}, "defer"),
        (
            Failure("open", counts_as_attempt=False),
            {"deferrals": tasklife.MAX_DEFERRALS, "attempt": 3, "max_attempts": 3},
            FailReason.HANDLER_FAILED,
        ),
        (
            Failure("open", counts_as_attempt=False),
            {"deferrals": tasklife.MAX_DEFERRALS},
            "retry",
        ),
        # A retry that would start after the task's deadline is not scheduled.
        (Failure("503"), {"deadline": NOW + dt.timedelta(seconds=1)}, FailReason.DEADLINE),
        (
            Failure("503", retry_after=120),
            {"deadline": NOW + dt.timedelta(seconds=60)},
            FailReason.DEADLINE,
        ),
    ],
)
def test_on_failure(failure: Failure, fields: dict[str, object], expected: object) -> None:
    decision = decide(failure, fields)
    if isinstance(expected, FailReason):
        assert isinstance(decision, Fail)
        assert decision.reason is expected
        return
    assert isinstance(decision, Retry)
    before = task(**fields)
    if expected == "retry":
        assert decision.task.attempt == before.attempt + 1
        assert decision.task.deferrals == before.deferrals
    else:
        assert decision.task.attempt == before.attempt
        assert decision.task.deferrals == before.deferrals + 1
    [record] = decision.task.history
    assert (record.attempt, record.agent_id, record.at) == (before.attempt, "a-0", NOW)
    assert record.retry_in_seconds == pytest.approx(decision.delay_seconds, abs=1e-3)


@pytest.mark.parametrize(
    ("attempt", "retry_after", "jitter", "expected"),
    [
        (1, None, 0.0, 1.0),  # half of base 2 s
        (1, None, 0.999999, 2.0),
        (2, None, 0.0, 2.0),
        (3, None, 0.5, 6.0),  # 8 s backoff: 4 fixed + 2 of jitter
        (20, None, 0.0, 150.0),  # capped at 300 s before the jitter halves it
        (20, None, 0.999999, 300.0),
        (1, 30.0, 0.0, 30.0),  # the circuit's time to half-open wins over a short backoff
        (1, 30.0, 0.5, 31.5),  # ... with up to 10 % spread on top
        (1, 86400.0, 0.5, 300.0),  # a hostile Retry-After is capped
        (5, 1.0, 0.0, 16.0),  # a short Retry-After does not shorten the backoff
    ],
)
def test_retry_delay(
    attempt: int, retry_after: float | None, jitter: float, expected: float
) -> None:
    assert tasklife.retry_delay(attempt, POLICY, retry_after, jitter) == pytest.approx(
        expected, rel=1e-5
    )


def test_history_keeps_the_newest_records() -> None:
    current = task(max_attempts=20)
    for n in range(tasklife.HISTORY_KEPT + 5):
        decision = tasklife.on_failure(
            current, Failure(f"e{n}"), now=NOW, agent_id="a", policy=POLICY, jitter=0.0
        )
        assert isinstance(decision, Retry) or n >= 19
        if isinstance(decision, Fail):
            break
        current = decision.task
    assert len(current.history) <= tasklife.HISTORY_KEPT
    assert current.history[-1].error == f"e{current.attempt - 2}"


@pytest.mark.parametrize(
    ("offset", "expired"),
    [
        (dt.timedelta(0), False),
        (dt.timedelta(minutes=6), False),
        (-dt.timedelta(hours=23), False),  # a day-long backlog is not too old
        (-dt.timedelta(hours=25), True),  # older than the replay guard remembers
    ],
)
def test_expiry(offset: dt.timedelta, expired: bool) -> None:
    assert tasklife.is_expired(NOW + offset, NOW, POLICY) is expired


def test_policy_env_round_trip() -> None:
    policy = TaskPolicy(
        default_timeout_seconds=150.5,
        claim_idle_seconds=40,
        lease_renew_seconds=5,
        retry_base_seconds=0.5,
        retry_max_seconds=60,
        result_ttl_seconds=3600,
        result_stream_max=500,
        dead_letter_max=50,
        max_payload_bytes=2048,
        max_clock_skew_seconds=30,
    )
    env = policy.to_env()
    assert set(env) == set(ENV_VARS), "every variable is written, so an agent never guesses"
    assert TaskPolicy.from_env(env) == policy
    assert TaskPolicy.from_env({}) == TaskPolicy()


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"NEWFUSE_TASK_TIMEOUT_SECONDS": "-1"}, "NEWFUSE_TASK_TIMEOUT_SECONDS"),
        ({"NEWFUSE_MAX_PAYLOAD_BYTES": "lots"}, "NEWFUSE_MAX_PAYLOAD_BYTES"),
        ({"NEWFUSE_LEASE_RENEW_SECONDS": "20"}, "claim_idle_seconds"),
    ],
)
def test_policy_errors_name_the_variable(env: dict[str, str], named: str) -> None:
    with pytest.raises(ValueError, match=named):
        TaskPolicy.from_env(env)


def test_claim_bound() -> None:
    assert POLICY.claim_bound_seconds == 40.0
