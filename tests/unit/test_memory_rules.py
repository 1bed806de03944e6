"""Fleet memory's pure rules: who may recall what, whose writes are trusted, the wire shapes."""

from __future__ import annotations

import numpy as np
import pytest

from newfuse.core.memory import Settlement, settlement, visible
from newfuse.wire import memory
from newfuse.wire.keys import FleetKeys
from newfuse.wire.memory import MemoryRecord, decode_vector, encode_vector
from newfuse.wire.state import FleetSummary, RolloutSummary

pytestmark = pytest.mark.unit


def record(expires_ms: int | None = None) -> MemoryRecord:
    return MemoryRecord(id="m1", text="t", revision="new", created_ms=0, expires_ms=expires_ms)


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


def rollout(phase: str) -> RolloutSummary:
    return RolloutSummary(
        phase=phase, stage="canary", step=1, stable_revision="old", canary_revision="new"
    )


@pytest.mark.parametrize(
    ("summary", "trusted", "pending"),
    [
        (None, None, None),  # the operator has not written yet: trust nobody
        (FleetSummary(update_revision="old"), "old", None),  # no rollout
        (FleetSummary(update_revision="new", rollout=rollout("Progressing")), "old", "new"),
        (FleetSummary(update_revision="new", rollout=rollout("Analyzing")), "old", "new"),
        (FleetSummary(update_revision="new", rollout=rollout("Paused")), "old", "new"),
        (FleetSummary(update_revision="new", rollout=rollout("Degraded")), "old", "new"),
        (FleetSummary(update_revision="new", rollout=rollout("Completed")), "new", None),
        (FleetSummary(update_revision="new", rollout=rollout("RolledBack")), "old", None),
        (FleetSummary(update_revision="new", rollout=rollout("Aborted")), "old", None),
    ],
)
def test_the_fleets_summary_says_whose_writes_are_trusted_and_whose_are_pending(
    summary: FleetSummary | None, trusted: str | None, pending: str | None
) -> None:
    assert settlement(summary) == Settlement(trusted, pending)


@pytest.mark.parametrize(
    ("rule", "writer", "held"),
    [
        (Settlement("old", "new"), "new", "new"),  # a canary's write waits for its verdict
        (Settlement("old", "new"), "old", None),
        (Settlement("new"), "new", None),  # completed: the canary is trusted now
        (Settlement(None), "old", "old"),  # unknown trust quarantines; the operator lifts it
    ],
)
def test_only_writes_of_an_untrusted_revision_are_quarantined(
    rule: Settlement, writer: str, held: str | None
) -> None:
    assert rule.quarantines(writer) == held


def test_vectors_keys_and_scripts_round_trip() -> None:
    vector = np.linspace(-1, 1, 384, dtype=np.float32)
    assert np.array_equal(decode_vector(encode_vector(vector)), vector)
    keys = FleetKeys("ns", "f")
    memory_keys = {
        keys.memory,
        keys.memory_quarantine,
        keys.memory_vectors,
        keys.memory_model,
        keys.memory_next_vectors,
        keys.memory_next_model,
        keys.memory_log,
    }
    assert len(memory_keys) == 7
    assert memory_keys <= set(keys.all_keys())
    assert all(k.startswith("newfuse:{ns/f}:memory") for k in memory_keys)
    scripts = [v for k, v in vars(memory).items() if k.endswith("_LUA")]
    assert len(scripts) == 6
    assert not any("LOG_LENGTH" in s for s in scripts)


@pytest.mark.parametrize("field", ["id", "text"])
def test_an_empty_id_or_text_is_refused_naming_the_field(field: str) -> None:
    fields = {"id": "m1", "text": "t", "revision": "r", "created_ms": 0, field: ""}
    with pytest.raises(ValueError, match=field):
        MemoryRecord.model_validate(fields)
