"""Rollout actions have one home (`RolloutAction`): the CLI, the core, the audit and Argo CD agree.

The one-shot actions cross processes as text ("promote@<time>" in an annotation, written by the
CLI or an Argo CD Lua action and read by the operator). Each place is checked against the enum
here, so a verb renamed in one of them alone fails this test.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from newfuse.api.rollout import ONE_SHOT_ACTIONS, RolloutAction
from newfuse.cli.rollout import rollout_app
from newfuse.core.actions import parse_action
from newfuse.core.audit import CONTROL_ACTIONS
from newfuse.core.naming import PAUSED_BY_ANNOTATION, ROLLOUT_ACTION_ANNOTATION

ACTIONS_DIR = Path(__file__).resolve().parents[2] / "charts/newfuse-operator/argocd/actions"
FLAGS = {
    RolloutAction.PROMOTE: "promote",
    RolloutAction.PROMOTE_FULL: "promote_full",
    RolloutAction.ABORT: "abort",
    RolloutAction.RETRY: "retry",
}


@pytest.mark.parametrize("action", sorted(ONE_SHOT_ACTIONS))
def test_each_one_shot_action_parses_to_its_own_control_only(action: RolloutAction) -> None:
    controls = parse_action(f"{action}@2026-12-01T06:00:00+00:00", None)
    raised = {name for name in FLAGS.values() if getattr(controls, name)}
    assert raised == {FLAGS[action]}


def test_the_one_shot_actions_are_the_enum_but_pause_and_resume() -> None:
    assert set(FLAGS) == ONE_SHOT_ACTIONS
    assert set(RolloutAction) - ONE_SHOT_ACTIONS == {RolloutAction.PAUSE, RolloutAction.RESUME}


def test_the_audit_names_every_action_once() -> None:
    assert sorted(CONTROL_ACTIONS.values()) == sorted(RolloutAction)


def test_the_cli_has_a_command_per_action_and_promote_full_is_an_option() -> None:
    commands = {command.name for command in rollout_app.registered_commands}
    assert set(RolloutAction) - {RolloutAction.PROMOTE_FULL} <= commands


def test_argo_cd_has_an_action_per_verb_and_discovery_lists_exactly_those() -> None:
    folders = {p.name for p in ACTIONS_DIR.iterdir() if (p / "action.lua").is_file()}
    assert folders == set(RolloutAction)
    discovery = (ACTIONS_DIR / "discovery.lua").read_text()
    assert set(re.findall(r'^actions\["([^"]+)"\]', discovery, re.M)) == set(RolloutAction)


@pytest.mark.parametrize("action", sorted(RolloutAction))
def test_each_argo_cd_action_writes_what_the_operator_reads(action: RolloutAction) -> None:
    script = (ACTIONS_DIR / action / "action.lua").read_text()
    if action in ONE_SHOT_ACTIONS:
        assert f'local verb = "{action}"' in script
        assert f'annotations["{ROLLOUT_ACTION_ANNOTATION}"] = verb .. "@"' in script
    else:
        paused = "true" if action is RolloutAction.PAUSE else "false"
        assert f"obj.spec.rollout.paused = {paused}" in script
        assert f'annotations["{PAUSED_BY_ANNOTATION}"]' in script
