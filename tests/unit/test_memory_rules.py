"""Fleet memory's pure rules: who may recall what, whose writes are quarantined, the record."""

from __future__ import annotations

import numpy as np
import pytest

from newfuse.core.memory import quarantining, visible
from newfuse.wire.keys import FleetKeys
from newfuse.wire.memory import MemoryRecord

pytestmark = pytest.mark.unit


def record(expires_ms: int | None = None) -> MemoryRecord:
    vector = MemoryRecord.encode_vector(np.full(4, 0.5, np.float32))
    return MemoryRecord(
        id="m1", text="t", model="m@1", vector=vector, revision="new", created_ms=0,
        expires_ms=expires_ms,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("quarantine", "reader", "expires_ms", "seen"),
    [
        ({}, "old", None, True),  # settled: everyone
        ({"m1": "new"}, "new", None, True),  # the canary sees its own writes
        ({"m1": "new"}, "old", None, False),  # stable never does, until promoted
        ({"m1": "new"}, "other", None, False),
        ({}, "old", 1000, False),  # expired
        ({}, "old", 1001, True),
    ],
)
def test_a_memory_is_visible_to_its_canary_only_until_settled_and_to_nobody_once_expired(
    quarantine: dict[str, str], reader: str, expires_ms: int | None, seen: bool
) -> None:
    assert visible(record(expires_ms), quarantine, reader, now_ms=1000) is seen


@pytest.mark.parametrize(
    ("writer", "canary", "stable", "held"),
    [
        ("new", "new", "old", "new"),
        ("old", "new", "old", None),
        ("new", None, "new", None),  # no rollout
        ("new", "new", "new", None),  # completed: the canary is stable now
    ],
)
def test_only_a_canarys_writes_are_quarantined(
    writer: str, canary: str | None, stable: str | None, held: str | None
) -> None:
    assert quarantining(writer, canary, stable) == held


def test_a_records_vector_and_keys_round_trip() -> None:
    assert np.array_equal(record().array(), np.full(4, 0.5, np.float32))
    keys = FleetKeys("ns", "f")
    assert {keys.memory, keys.memory_quarantine} <= set(keys.all_keys())
    assert keys.memory_quarantine.startswith("newfuse:{ns/f}:")
