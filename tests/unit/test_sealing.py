"""Sealed payloads open only where they belong, and only with a key held there."""

from __future__ import annotations

import orjson
import pytest

from newfuse.wire.sealing import RESULT_CLEAR, SEALED, TASK_CLEAR, Sealer, SealError, is_sealed

SECRET = b"the-fleet-data-key-0123456789abcdef"
A = Sealer.of("team-a", "summarizer", SECRET)
TASK = {"task_id": "t-1", "handler": "echo", "input": {"text": "MARKER secret"}, "attempt": 1}


def test_a_sealed_task_keeps_only_its_id_in_the_clear_and_opens_back() -> None:
    sealed = A.seal_fields(TASK, TASK_CLEAR, "task")
    assert set(sealed) == {"task_id", SEALED}
    assert b"MARKER" not in orjson.dumps(sealed)
    assert is_sealed(sealed)
    assert A.open_fields(sealed, "task") == TASK


def test_a_result_keeps_what_routing_and_gates_read() -> None:
    result: dict[str, object] = {
        "task_id": "t-1", "status": "failed", "agent_id": "a-0", "finished_at": "2026-12-01T00:00Z",
        "reason": "handler_failed", "output": None, "error": "boom: MARKER", "history": [],
    }  # fmt: skip
    sealed = A.seal_fields(result, RESULT_CLEAR, "result")
    assert set(sealed) == {"task_id", "status", "agent_id", "finished_at", "reason", SEALED}
    assert b"MARKER" not in orjson.dumps(sealed)
    assert A.open_fields(sealed, "result") == result


@pytest.mark.parametrize(
    ("opener", "task_id", "kind"),
    [
        (Sealer.of("team-b", "summarizer", SECRET), "t-1", "task"),  # same key, other namespace
        (Sealer.of("team-a", "other", SECRET), "t-1", "task"),  # other fleet
        (A, "t-2", "task"),  # moved to another task
        (A, "t-1", "result"),  # replayed as a result
    ],
    ids=["other namespace", "other fleet", "other task", "other kind"],
)
def test_a_sealed_value_opens_only_where_it_was_sealed_for(
    opener: Sealer, task_id: str, kind: str
) -> None:
    sealed = A.seal({"x": 1}, "t-1", "task")
    with pytest.raises(SealError, match="cannot be opened"):
        opener.open(sealed, task_id, kind)


def test_altered_unknown_and_garbage_values_are_refused_with_a_reason() -> None:
    sealed = A.seal("x", "t-1", "task")
    version, kid, nonce, box = sealed[SEALED].split(".")
    flipped = box[:-2] + ("A" if box[-2] != "A" else "B") + box[-1]
    with pytest.raises(SealError, match="cannot be opened"):
        A.open({SEALED: f"{version}.{kid}.{nonce}.{flipped}"}, "t-1", "task")
    other = Sealer.of("team-a", "summarizer", b"another-data-key-0123456789abcdefgh")
    with pytest.raises(SealError, match="does not hold"):
        other.open(sealed, "t-1", "task")
    for garbage in ({SEALED: "v2.x.y.z"}, {SEALED: 5}, {"nope": 1}, "text"):
        with pytest.raises(SealError, match="not a sealed value"):
            A.open(garbage, "t-1", "task")


def test_an_old_data_key_still_opens_during_rotation() -> None:
    old = Sealer.of("team-a", "summarizer", SECRET)
    new = Sealer.of("team-a", "summarizer", b"the-next-data-key-0123456789abcdefg", [SECRET])
    assert new.open(old.seal("kept", "t-1", "task"), "t-1", "task") == "kept"
    assert new.current.kid != old.current.kid


def test_each_seal_uses_a_fresh_nonce() -> None:
    assert A.seal("same", "t-1", "task") != A.seal("same", "t-1", "task")
