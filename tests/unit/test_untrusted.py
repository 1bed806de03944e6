"""Agent-written Redis records: every malformed one is skipped with a reason, good ones are kept."""

from __future__ import annotations

import json
from typing import Any

import pytest

from factories import NOW
from newfuse.core.untrusted import (
    MAX_COUNT,
    LogLimiter,
    MalformedRecordError,
    parse_count,
    parse_revision_counts,
    parse_state_update,
    parse_states,
)
from newfuse.wire.state import AgentMetrics, AgentState, AgentStatus, StateUpdate

GOOD = StateUpdate(
    agent_id="a-0",
    state=AgentState(
        id="a-0",
        status=AgentStatus.ACTIVE,
        revision="rev1",
        metrics=AgentMetrics(tasks_completed=3, tasks_failed=1, latency_p95_ms=12.5),
    ),
    version=5,
    timestamp=NOW,
).to_json()


def _with(**changes: Any) -> str:
    """GOOD with some (camelCase, dotted) fields replaced."""
    record = json.loads(GOOD)
    for path, value in changes.items():
        target = record
        *parents, leaf = path.split("__")
        for parent in parents:
            target = target[parent]
        target[leaf] = value
    return json.dumps(record)


BAD = {
    "not json": ("{not json", "record"),
    "empty": ("", "record"),
    "json, not an object": ("[1, 2]", "record"),
    "missing state": (json.dumps({"agentId": "x", "version": 1}), "state"),
    "negative version": (_with(version=-1), "version"),
    "unknown status": (_with(state__status="zombie"), "state.status"),
    "string count": (_with(state__metrics__tasksCompleted="many"), "tasksCompleted"),
    "negative count": (_with(state__metrics__tasksFailed=-3), "tasksFailed"),
    "count beyond int64": (_with(state__metrics__tasksCompleted=2**70), "tasksCompleted"),
    "count beyond the bound": (_with(state__metrics__requestsHandled=MAX_COUNT + 1), "requests"),
    "naive timestamp": (_with(timestamp="2026-11-21T12:00:00"), "time zone"),
    "naive lastActive": (_with(state__metrics__lastActive="2026-11-21T12:00:00"), "lastActive"),
    "NaN latency": (GOOD.replace("12.5", "NaN"), "latency"),
    "infinite latency": (GOOD.replace("12.5", "Infinity"), "latency"),
    "negative latency": (_with(state__metrics__latencyP95Ms=-1.0), "latencyP95Ms"),
    "replacement characters": ("\ufffd\ufffd{", "record"),
}  # fmt: skip


@pytest.mark.parametrize(("raw", "mentions"), BAD.values(), ids=BAD.keys())
def test_malformed_state_is_refused_with_a_reason(raw: str, mentions: str) -> None:
    with pytest.raises(MalformedRecordError) as info:
        parse_state_update(raw)
    message = str(info.value)
    assert mentions.lower() in message.lower() or message.startswith("record"), message
    assert len(message) <= 200


def test_good_state_parses_and_unknown_fields_are_ignored() -> None:
    assert parse_state_update(GOOD).state.metrics.tasks_completed == 3
    assert parse_state_update(_with(futureField={"x": 1})).agent_id == "a-0"


def test_parse_states_keeps_the_good_and_names_the_bad() -> None:
    updates, skipped = parse_states({"a-0": GOOD, "evil": "{", "b": _with(version="x")})
    assert [u.agent_id for u in updates] == ["a-0"]
    assert sorted(s.field for s in skipped) == ["b", "evil"]


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("0", 0),
        ("42", 42),
        (" 7 ", 7),
        (str(MAX_COUNT), MAX_COUNT),
        (str(MAX_COUNT + 1), None),
        ("9" * 400, None),
        ("-1", None),
        ("1.5", None),
        ("1e3", None),
        ("", None),
        ("abc", None),
        ("\u0663", None),  # an Arabic-Indic digit: isdigit() says yes, HINCRBY never writes it
    ],
)
def test_parse_count(value: str, expected: int | None) -> None:
    assert parse_count(value) == expected


def test_revision_counts_skip_bad_values_and_ignore_other_counters() -> None:
    counts, skipped = parse_revision_counts(
        {
            "rev:r1:tasksCompleted": "5",
            "rev:r1:tasksFailed": "2",
            "rev:r2:tasksCompleted": "garbage",
            "rev:r2:tasksFailed": "1",
            "rev:r2:tasksRejected": "4",
            "rev:r3:duplicates": "9",  # another outcome: not a completed/failed count
            "rev:r4:tasksBogus": "3",  # was counted as failed before
            "tasksCompleted": "100",
            "weird:field": "x",
        }
    )
    assert counts == {"r1": (5, 2, 0), "r2": (0, 1, 4)}
    assert [s.field for s in skipped] == ["rev:r2:tasksCompleted"]


def test_log_limiter_logs_once_per_interval_and_counts_the_repeats() -> None:
    limiter = LogLimiter(interval=60)
    assert limiter.admit("k", 0.0) == 0
    assert limiter.admit("k", 10.0) is None
    assert limiter.admit("k", 59.0) is None
    assert limiter.admit("other", 59.0) == 0, "keys are limited separately"
    assert limiter.admit("k", 60.0) == 2, "two repeats were suppressed"
    assert limiter.admit("k", 61.0) is None


def test_log_limiter_forgets_quiet_keys() -> None:
    limiter = LogLimiter(interval=1)
    for i in range(2000):
        limiter.admit(i, float(i))
    assert len(limiter._last) <= 1026
