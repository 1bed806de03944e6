"""The rollout-action annotation: "verb@time", acted on once, anything else ignored."""

from __future__ import annotations

import dataclasses

import pytest

from newfuse.core.actions import Controls, parse_action

NONE = Controls(promote=False, promote_full=False, abort=False, retry=False)


@pytest.mark.parametrize(
    ("value", "handled", "expected"),
    [
        (None, None, NONE),
        ("", None, NONE),
        ("promote@2026-11-21T12:00:00Z", None, Controls(promote=True)),
        ("  Promote-Full @2026-11-21T12:00:00Z", None, Controls(promote_full=True)),
        ("abort@2026-11-21T12:00:00Z", "promote@2026-11-21T11:00:00Z", Controls(abort=True)),
        ("retry", None, Controls(retry=True)),
        ("promote@2026-11-21T12:00:00Z", "promote@2026-11-21T12:00:00Z", NONE),
        ("", "", NONE),
        ("rollback@2026-11-21T12:00:00Z", None, NONE),
    ],
    ids=["unset", "empty", "promote", "spaces and case", "a new action after another",
         "no time", "already handled", "empty and handled", "unknown verb"],
)  # fmt: skip
def test_parse_action(value: str | None, handled: str | None, expected: Controls) -> None:
    assert parse_action(value, handled) == expected


def test_no_action_requests_nothing() -> None:
    assert not any(dataclasses.astuple(Controls()))


def test_controls_cannot_change_after_parsing() -> None:
    controls = parse_action("abort@2026-11-21T12:00:00Z", None)
    with pytest.raises(dataclasses.FrozenInstanceError):
        controls.abort = False  # type: ignore[misc]
