"""Reading untrusted stream entries and showing them: total functions, whatever the bytes.

The integration test (tests/integration/test_taskclient_hostile.py) fuzzes the same path through a
real redis-server; these check the pure pieces fast and exhaustively, and the terminal rendering
of hostile values (rich markup in a task id must not end `newfuse task watch`).
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from newfuse.adapters.streamread import (
    dead_letter_of_entry,
    decode_result,
    entry_time,
    letter_task,
    result_of_entry,
)
from newfuse.cli.render import dead_letter_table, result_line, result_view
from newfuse.wire.envelope import MessageRejectedError, MessageType, encode
from newfuse.wire.tasks import AttemptRecord, DeadLetter, ResultPayload, ResultStatus, TaskPayload

NOW = dt.datetime(2030, 1, 1, tzinfo=dt.UTC)  # results from the future are still results


def result_payload(**changes: Any) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "task_id": "t-1",
        "status": "failed",
        "error": "boom",
        "agent_id": "agent-0",
        "attempts": 2,
        "finished_at": NOW.isoformat(),
        "reason": "timeout",
        "history": [{"attempt": 1, "at": NOW.isoformat(), "error": "slow", "agent_id": "a-1"}],
    }
    return {**payload, **changes}


def envelope(type_: MessageType = MessageType.RESULT, **changes: Any) -> bytes:
    return encode(type_, result_payload(**changes), "agent-0", now=NOW)


def test_a_valid_result_is_read_with_reason_and_history() -> None:
    result = decode_result(envelope())
    assert result.reason == "timeout"
    assert [r.error for r in result.history] == ["slow"]
    assert result_of_entry({b"task_id": b"t-1", b"envelope": envelope()}) == result


@pytest.mark.parametrize(
    ("raw", "reason"),
    [
        (b"\xff\xfe not utf-8", "malformed_json"),
        (b"{nope", "malformed_json"),
        (b"[1, 2]", "invalid_envelope"),
        (envelope(MessageType.TASK), "invalid_envelope"),
        (envelope(status="maybe"), "invalid_payload"),
        (envelope(finished_at="yesterday"), "invalid_payload"),
        (envelope(history="not a list"), "invalid_payload"),
        (b'{"type": "result", "payload": {}, "metadata": {"a": 1e400}}', "malformed_json"),
    ],
    ids=["not utf-8", "not json", "not an object", "a task", "bad enum", "bad time",
         "bad history", "huge number"],
)  # fmt: skip
def test_anything_else_is_refused_with_a_reason(raw: bytes, reason: str) -> None:
    with pytest.raises(MessageRejectedError) as caught:
        decode_result(raw)
    assert caught.value.reason == reason


def test_an_entry_without_an_envelope_is_refused() -> None:
    with pytest.raises(MessageRejectedError, match="no `envelope` field"):
        result_of_entry({b"task_id": b"t-1"})


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=12,
)
RESULT_FIELDS = [*sorted(result_payload()), "output", "latency_ms", "revision"]


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.sampled_from(RESULT_FIELDS), json_values, max_size=6))
def test_a_mangled_result_is_read_or_refused_never_raised(changes: dict[str, Any]) -> None:
    try:
        result = decode_result(envelope(**changes))
    except MessageRejectedError:
        return
    assert isinstance(result, ResultPayload)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(st.binary(max_size=12), st.binary(max_size=200), max_size=5))
def test_any_entry_is_read_or_refused_never_raised(fields: dict[bytes, bytes]) -> None:
    with contextlib.suppress(MessageRejectedError):
        result_of_entry(fields)
    letter = dead_letter_of_entry("1700000000000-0", fields)
    assert isinstance(letter, DeadLetter)
    assert letter_task(letter) is None or isinstance(letter_task(letter), TaskPayload)


def test_an_unreadable_dead_letter_is_listed_with_its_entry_time() -> None:
    letter = dead_letter_of_entry("1700000000000-0", {b"reason": b"\xff"})
    assert letter.reason == "unreadable"
    assert letter.at == entry_time("1700000000000-0") == dt.datetime.fromtimestamp(1.7e9, dt.UTC)
    assert letter_task(letter) is None
    assert entry_time("garbage") is None


def render(renderable: Any) -> str:
    out = io.StringIO()
    Console(file=out, width=200, color_system=None).print(renderable)
    return out.getvalue()


hostile = st.lists(
    st.sampled_from(["[", "]", "/", "\\", "bold", "red", "[/]", "[bold", "\x1b[31m", "\x00", "\n",
                     "\r", "\t", " ", "\u202e", "x"]),
    max_size=20,
).map("".join)  # fmt: skip


@settings(max_examples=200, deadline=None)
@given(task_id=hostile, agent_id=hostile, error=hostile, reason=hostile)
def test_hostile_values_render_as_text(
    task_id: str, agent_id: str, error: str, reason: str
) -> None:
    record = AttemptRecord(attempt=1, at=NOW, error=error, agent_id=agent_id)
    result = ResultPayload(
        task_id=task_id,
        status=ResultStatus.FAILED,
        error=error,
        agent_id=agent_id,
        finished_at=NOW,
        reason=reason,
        history=[record],
    )
    render(result_line(result))
    render(result_view(result))
    task = TaskPayload(task_id="t", handler="echo", history=[record])
    raw = encode(MessageType.TASK, task.model_dump(mode="json"), "x", now=NOW).decode()
    letter = DeadLetter(
        reason=reason,
        detail=error,
        raw=raw,
        agent_id=agent_id,
        source_stream="s",
        task_id=task_id,
        at=NOW,
    )
    render(dead_letter_table("dead letters", [(task_id, letter)]))


def test_markup_in_values_is_shown_literally_and_long_values_are_cut() -> None:
    result = ResultPayload(
        task_id="[bold]t[/bold]",
        status=ResultStatus.FAILED,
        error="x" * 5000,
        agent_id="[/]",
        finished_at=NOW,
        reason="deadline",
    )
    line = render(result_line(result))
    assert "[bold]t[/bold]" in line
    assert "[/]" in line
    assert "(deadline)" in line
    assert len(line) < 400


def test_the_dead_letter_table_shows_reason_attempts_times_and_history() -> None:
    history = [
        AttemptRecord(attempt=1, at=NOW, error="timed out after 600s", agent_id="agent-0"),
        AttemptRecord(attempt=2, at=NOW + dt.timedelta(seconds=5), error="OOM", agent_id="agent-1"),
    ]
    task = TaskPayload(task_id="t-9", handler="echo", history=history, attempt=3)
    raw = orjson.dumps({"payload": task.model_dump(mode="json")}).decode()
    letter = DeadLetter(
        reason="exhausted",
        detail="3 attempts failed",
        raw=raw,
        agent_id="agent-2",
        source_stream="s",
        task_id="t-9",
        attempts=3,
        at=NOW + dt.timedelta(seconds=9),
    )
    shown = render(dead_letter_table("dead letters", [("1893456009000-0", letter)]))
    expected = [
        "exhausted",
        "t-9",
        "agent-2",
        "2030-01-01 00:00:09Z",
        "3 attempts failed",
        "#1 00:00:00Z agent-0: timed out after 600s",
        "#2 00:00:05Z agent-1: OOM",
    ]
    assert [e for e in expected if e not in shown] == []
