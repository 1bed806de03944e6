"""The Argo CD rollout actions for NewFuseAgent, run by a real Lua interpreter (Lua 5.1 and 5.4).

Discovery enables exactly the actions that make sense for each sample fleet; pause and resume set
spec.rollout.paused; promote, promote-full, abort and retry request what the CLI requests, in the
same annotation; each stamps who asked and when, in UTC even where local time is far off it.
"""

from __future__ import annotations

import copy
import datetime as dt
import re
import time
from collections.abc import Iterator

import pytest

import argocd_cm
from argocd_lua import ACTIONS, ARGOCD, DISCOVERY, load, run_lua
from newfuse.api.v1alpha1 import RolloutSpec
from newfuse.core.actions import Controls, parse_action
from newfuse.core.naming import ROLLOUT_ACTION_ANNOTATION

ANNOTATION_ACTIONS = {
    "promote": Controls(promote=True),
    "promote-full": Controls(promote_full=True),
    "abort": Controls(abort=True),
    "retry": Controls(retry=True),
}


def _without_empty(value: object) -> object:
    """Lua cannot tell {} from []: compare objects with empty containers left out."""
    if isinstance(value, dict):
        pruned = {k: _without_empty(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [_without_empty(v) for v in value]
    return value


@pytest.fixture
def far_timezone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time 14 hours off UTC, so a timestamp taken in local time cannot pass as UTC."""
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


DISCOVERY_CASES = [
    ("healthy", {"pause"}),
    ("healthy_spec_reverted", {"pause"}),  # RolledBack, but the spec no longer wants that revision
    ("progressing_no_status", {"pause"}),
    ("progressing_rollout", {"pause", "promote", "promote-full", "abort"}),
    ("progressing_scaling_up", set()),  # Replace strategy: nothing to pause, no rollout
    ("degraded_rollout_stuck", {"pause", "promote", "promote-full", "abort"}),
    ("degraded_rolled_back", {"pause", "retry"}),
    ("degraded_aborted", {"pause", "retry"}),
    ("suspended_rollout_paused", {"resume", "abort"}),
]


def test_every_action_has_a_script() -> None:
    assert argocd_cm.action_names() == sorted(ACTIONS)


@pytest.mark.parametrize(
    ("sample", "enabled"), DISCOVERY_CASES, ids=[c[0] for c in DISCOVERY_CASES]
)
def test_discovery(sample: str, enabled: set[str], lua_version: str) -> None:
    actions = run_lua(DISCOVERY, load(sample), lua_version)
    assert set(actions) == set(ACTIONS)
    assert {name for name, a in actions.items() if a["disabled"] is False} == enabled
    assert all(a["disabled"] is True for name, a in actions.items() if name not in enabled)
    assert all(a["iconClass"].startswith("fa ") and a["displayName"] for a in actions.values())


# Who asked, as "<user>@<time>": what the CLI writes next to its requests.
ACTION_BY = "newfuse.io/rollout-action-by"
PAUSED_BY = "newfuse.io/paused-by"


def _lua_clock_floor() -> dt.datetime:
    """The earliest second Lua's ``os.time()`` may stamp from now on.

    Lua reads ``time()``, which glibc serves from the coarse real-time clock; that clock lags
    ``datetime.now()`` by up to a scheduler tick, so just after a second rolls over Lua can
    still stamp the previous one (seen twice under CI load).
    """
    return dt.datetime.now(dt.UTC).replace(microsecond=0) - dt.timedelta(seconds=1)


def _stamped_time(value: str, prefix: str) -> dt.datetime:
    """The time in "<prefix>@<UTC RFC 3339 time, seconds, Z>", which must be the whole value."""
    match = re.fullmatch(rf"{re.escape(prefix)}@(\d{{4}}-\d\d-\d\dT\d\d:\d\d:\d\dZ)", value)
    assert match, f"{value!r} is not {prefix}@<UTC time>"
    return dt.datetime.fromisoformat(match.group(1))


@pytest.mark.usefixtures("far_timezone")
@pytest.mark.parametrize(
    ("action", "sample", "paused"),
    [
        ("pause", "progressing_rollout", True),
        ("pause", "progressing_no_status", True),  # no spec.rollout yet
        ("resume", "suspended_rollout_paused", False),
    ],
)
def test_pause_and_resume_set_spec_rollout_paused(
    action: str, sample: str, paused: bool, lua_version: str
) -> None:
    body = load(sample)
    before = _lua_clock_floor()
    result = run_lua(ARGOCD / "actions" / action / "action.lua", body, lua_version)
    after = dt.datetime.now(dt.UTC)

    assert result["spec"]["rollout"]["paused"] is paused
    stamp = result["metadata"]["annotations"][PAUSED_BY]
    assert before <= _stamped_time(stamp, "argocd") <= after

    expected = copy.deepcopy(body)
    expected["spec"].setdefault("rollout", {})["paused"] = paused
    expected["metadata"].setdefault("annotations", {})[PAUSED_BY] = stamp
    assert _without_empty(result) == _without_empty(expected)


@pytest.mark.usefixtures("far_timezone")
@pytest.mark.parametrize("action", sorted(ANNOTATION_ACTIONS))
@pytest.mark.parametrize("sample", ["healthy", "progressing_rollout"])  # with/without annotations
def test_annotation_actions_request_what_the_cli_requests(
    action: str, sample: str, lua_version: str
) -> None:
    body = load(sample)
    before = _lua_clock_floor()
    result = run_lua(ARGOCD / "actions" / action / "action.lua", body, lua_version)
    after = dt.datetime.now(dt.UTC)

    value = result["metadata"]["annotations"][ROLLOUT_ACTION_ANNOTATION]
    assert before <= _stamped_time(value, action) <= after
    assert parse_action(value, None) == ANNOTATION_ACTIONS[action]
    assert parse_action(value, value) == Controls()  # acted on once
    by = result["metadata"]["annotations"][ACTION_BY]
    assert by == "argocd@" + value.split("@", 1)[1]

    expected = copy.deepcopy(body)
    expected["metadata"].setdefault("annotations", {}).update(
        {ROLLOUT_ACTION_ANNOTATION: value, ACTION_BY: by}
    )
    assert _without_empty(result) == _without_empty(expected)


def test_rollout_spec_has_the_paused_field_the_actions_set() -> None:
    assert RolloutSpec.model_fields["paused"].alias == "paused"
    assert "paused" in RolloutSpec.model_json_schema(by_alias=True)["properties"]
