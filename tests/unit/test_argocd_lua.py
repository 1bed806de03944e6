"""The Argo CD health check and rollout actions for NewFuseAgent, run by a real Lua interpreter.

Argo CD runs charts/newfuse-operator/argocd/*.lua in gopher-lua (Lua 5.1) with only the base,
table and package libraries and os.time/os.date. These tests run the same files with lupa's Lua
5.1 and 5.4, in a sandbox stripped to those libraries, against sample fleets in argocd_samples/
(whose spec and status must validate against the API models) and against statuses produced by the
operator's own derive_status, so a renamed status field or a changed enum breaks them.
"""

from __future__ import annotations

import copy
import datetime as dt
import importlib
import re
import shutil
import time
from collections.abc import Iterator
from enum import StrEnum
from pathlib import Path
from typing import Any

import pytest
import yaml
from pydantic import BaseModel

import argocd_cm
from factories import NOW, fleet, pod
from newfuse.api.rollout import RolloutPhase, RolloutState, Stage
from newfuse.api.v1alpha1 import (
    ConditionStatus,
    ConditionType,
    NewFuseAgent,
    NewFuseAgentSpec,
    NewFuseAgentStatus,
    ObjectMeta,
    Phase,
    RolloutSpec,
    RolloutStrategy,
)
from newfuse.core.actions import Controls, parse_action
from newfuse.core.naming import ROLLOUT_ACTION_ANNOTATION
from newfuse.core.planner import plan
from newfuse.core.pods import ObservedPod, PodHealth
from newfuse.core.status import StatusInputs, derive_status

ARGOCD = argocd_cm.ARGOCD_DIR
HEALTH = ARGOCD / "health.lua"
DISCOVERY = ARGOCD / "actions" / "discovery.lua"
SAMPLES = Path(__file__).parent / "argocd_samples"
ACTIONS = ("pause", "resume", "promote", "promote-full", "abort", "retry")
ANNOTATION_ACTIONS = {
    "promote": Controls(promote=True),
    "promote-full": Controls(promote_full=True),
    "abort": Controls(abort=True),
    "retry": Controls(retry=True),
}
# gopher-lua is Lua 5.1; 5.4 catches anything that only works by accident of one version.
LUA_VERSIONS = ("lua51", "lua54")

# Argo CD opens base, table, package and a safe os (time, date) only; everything else goes, and
# strings lose their methods (("x"):sub() needs the string library).
SANDBOX = """
local safe_os = {time = os.time, date = os.date}
getmetatable("").__index = nil
for _, name in ipairs({"string", "math", "io", "debug", "coroutine", "utf8", "bit32", "jit",
                       "ffi", "python"}) do
  _G[name] = nil
  package.loaded[name] = nil
end
os = safe_os
package.loaded.os = safe_os
"""


# -- running Lua ---------------------------------------------------------------------------------


def _to_lua(lua: Any, value: object) -> object:
    """A JSON value as Argo CD hands it to Lua: objects and lists become tables (lists 1-based)."""
    if isinstance(value, dict):
        table = lua.table()
        for key, item in value.items():
            if item is not None:  # a JSON null is an absent field
                table[key] = _to_lua(lua, item)
        return table
    if isinstance(value, list):
        table = lua.table()
        for index, item in enumerate(value, start=1):
            table[index] = _to_lua(lua, item)
        return table
    if isinstance(value, bool | int | float | str):
        return value
    raise TypeError(f"not a JSON value: {value!r}")


def _from_lua(module: Any, value: Any) -> object:
    """A Lua result as Python: a table with keys 1..n is a list, any other table a dict."""
    if module.lua_type(value) != "table":
        return value
    items = {key: _from_lua(module, item) for key, item in value.items()}
    if items and list(items) == list(range(1, len(items) + 1)):
        return list(items.values())
    return items


def run_lua(script: Path, obj: dict[str, Any], version: str) -> Any:
    """Run one script the way Argo CD does: global `obj`, sandboxed libraries, its return value."""
    module = importlib.import_module(f"lupa.{version}")
    lua = module.LuaRuntime(register_eval=False, register_builtins=False)
    lua.execute(SANDBOX)
    lua.globals().obj = _to_lua(lua, obj)
    return _from_lua(module, lua.execute(script.read_text(), name=script.name))


def _without_empty(value: object) -> object:
    """Lua cannot tell {} from []: compare objects with empty containers left out."""
    if isinstance(value, dict):
        pruned = {k: _without_empty(v) for k, v in value.items()}
        return {k: v for k, v in pruned.items() if v not in ({}, [])}
    if isinstance(value, list):
        return [_without_empty(v) for v in value]
    return value


def load(name: str) -> dict[str, Any]:
    """One sample fleet."""
    body = yaml.safe_load((SAMPLES / f"{name}.yaml").read_text())
    assert isinstance(body, dict)
    return body


@pytest.fixture(params=LUA_VERSIONS)
def lua_version(request: pytest.FixtureRequest) -> str:
    """Each test runs under Lua 5.1 (what Argo CD embeds) and Lua 5.4."""
    version: str = request.param
    return version


@pytest.fixture
def far_timezone(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Local time 14 hours off UTC, so a timestamp taken in local time cannot pass as UTC."""
    monkeypatch.setenv("TZ", "Pacific/Kiritimati")
    time.tzset()
    yield
    monkeypatch.undo()
    time.tzset()


@pytest.mark.parametrize(
    "snippet",
    [
        'return string.format("%d", 1)',
        'return ("x"):upper()',
        "return math.max(1, 2)",
        'return require("string")',
        'return os.getenv("HOME")',
        'return io.open("/etc/hostname")',
    ],
)
def test_the_sandbox_refuses_what_argo_cd_refuses(
    snippet: str, lua_version: str, tmp_path: Path
) -> None:
    script = tmp_path / "probe.lua"
    script.write_text(snippet)
    module = importlib.import_module(f"lupa.{lua_version}")
    with pytest.raises(module.LuaError):
        run_lua(script, {}, lua_version)


# -- what the scripts read must exist in the API -------------------------------------------------

SCRIPTS = (HEALTH, DISCOVERY)


def _fields(model: type[BaseModel]) -> set[str]:
    return set(model.model_json_schema(by_alias=True)["properties"])


# A field read through each Lua variable, and the model that must declare it.
FIELD_READS = [
    (r"(?<![.\w])status\.(\w+)", NewFuseAgentStatus),
    (r"(?<![\w])spec\.(\w+)", NewFuseAgentSpec),
    (r"(?<![.\w])rollout\.(\w+)", RolloutState),
    (r"(?<![.\w])rolloutSpec\.(\w+)", RolloutSpec),
    (r"(?<![.\w])metadata\.(\w+)", ObjectMeta),
]
# A string literal compared with each thing, and the enum it must belong to.
ENUM_USES: list[tuple[str, type[StrEnum]]] = [
    (r'status\.phase [=~]= "(\w+)"', Phase),
    (r'(?<![.\w])(?:rolloutPhase|phase) [=~]= "(\w+)"', RolloutPhase),
    (r'condition\(status, "(\w+)"\)', ConditionType),
    (r'\.status == "(\w+)"', ConditionStatus),
    (r'strategy [=~]= "(\w+)"', RolloutStrategy),
]


@pytest.mark.parametrize(
    ("pattern", "model"), FIELD_READS, ids=[m.__name__ for _, m in FIELD_READS]
)
def test_fields_the_scripts_read_exist(pattern: str, model: type[BaseModel]) -> None:
    """A renamed status or spec field breaks this test, even where no sample would notice."""
    read = {m for script in SCRIPTS for m in re.findall(pattern, script.read_text())}
    assert read, f"no field read matches {pattern}: the test has gone blind"
    assert read <= _fields(model), f"{sorted(read - _fields(model))} not in {model.__name__}"


@pytest.mark.parametrize(("pattern", "enum"), ENUM_USES, ids=[e.__name__ for _, e in ENUM_USES])
def test_values_the_scripts_compare_with_exist(pattern: str, enum: type[StrEnum]) -> None:
    used = {m for script in SCRIPTS for m in re.findall(pattern, script.read_text())}
    assert used, f"no comparison matches {pattern}: the test has gone blind"
    values = {e.value for e in enum}
    assert used <= values, f"{sorted(used - values)} are not {enum.__name__} values"


# -- health ------------------------------------------------------------------------------------

HEALTH_CASES = [
    ("healthy", "Healthy", "3/3 agents ready; revision 7c9f2d41b0"),
    ("healthy_spec_reverted", "Healthy", "2/2 agents ready"),
    ("progressing_no_status", "Progressing", "Waiting for the operator to observe the fleet"),
    (
        "progressing_new_generation",
        "Progressing",
        "generation 4 (status is of generation 3)",
    ),
    (
        "progressing_rollout",
        "Progressing",
        "Rollout Analyzing at Initial step 1: 1/3 agents",
    ),
    ("progressing_scaling_up", "Progressing", "3/5 agents ready"),
    ("progressing_pending", "Progressing", "0/2 agents ready"),
    ("progressing_counts_behind", "Progressing", "Waiting for agents: 2/3 ready"),
    ("degraded_crash_looping", "Degraded", "PodsCrashLooping: failing pods: summarizers-7c9f"),
    ("degraded_rolled_back", "Degraded", "RolledBack: gate failed at Initial step 1"),
    ("degraded_aborted", "Degraded", "Rollout Aborted: aborted: every agent back on stable"),
    ("degraded_rollout_stuck", "Degraded", "Rollout Degraded: only 0/1 canary agents Ready"),
    ("degraded_while_paused", "Degraded", "PodsFailed: failing pods"),
    ("suspended_rollout_paused", "Suspended", "Rollout paused at Initial step 1: 1/3 agents on"),
    ("suspended_fleet_paused", "Suspended", "spec.paused is true"),
]


def test_every_sample_has_a_health_case() -> None:
    assert sorted(p.stem for p in SAMPLES.glob("*.yaml")) == sorted(c[0] for c in HEALTH_CASES)


@pytest.mark.parametrize(
    ("sample", "status", "message"), HEALTH_CASES, ids=[c[0] for c in HEALTH_CASES]
)
def test_health(sample: str, status: str, message: str, lua_version: str) -> None:
    health = run_lua(HEALTH, load(sample), lua_version)
    assert health == {"status": status, "message": health["message"]}
    assert message in health["message"]


@pytest.mark.parametrize("sample", [c[0] for c in HEALTH_CASES])
def test_samples_are_valid_fleets_with_the_same_health_after_a_round_trip(sample: str) -> None:
    """Samples cannot drift from the API (unknown fields are refused), nor depend on omissions."""
    body = load(sample)
    parsed = NewFuseAgent.model_validate(body)
    dumped = parsed.model_dump(by_alias=True, mode="json")
    assert run_lua(HEALTH, dumped, "lua51") == run_lua(HEALTH, body, "lua51")


def test_health_reads_numbers_given_as_strings(lua_version: str) -> None:
    """Argo CD may pass numbers as json.Number strings: "3" < "10" must not decide anything."""
    body = load("progressing_new_generation")
    body["metadata"]["generation"] = "10"
    body["status"]["observedGeneration"] = "9"
    assert run_lua(HEALTH, body, lua_version)["status"] == "Progressing"
    body["status"]["observedGeneration"] = "10"
    body["status"]["readyReplicas"] = "3"
    assert run_lua(HEALTH, body, lua_version)["status"] == "Healthy"


@pytest.mark.parametrize(
    ("strategy", "expected"), [("Phased", "Suspended"), ("Replace", "Healthy")]
)
def test_a_paused_rollout_spec_suspends_only_phased_fleets(
    strategy: str, expected: str, lua_version: str
) -> None:
    """spec.rollout.paused holds the next phased rollout too; Replace ignores it."""
    body = load("healthy")
    body["spec"]["rollout"] = {"strategy": strategy, "paused": True}
    assert run_lua(HEALTH, body, lua_version)["status"] == expected


# -- health of statuses the operator derives -----------------------------------------------------


def _rollout(phase: RolloutPhase, canary_agents: int, message: str) -> RolloutState:
    return RolloutState(
        phase=phase,
        stage=Stage.INITIAL,
        step=1,
        stable_revision="rev1",
        canary_revision="rev2",
        canary_agents=canary_agents,
        step_started_at=NOW,
        message=message,
    )


def _operator_view(
    pods: list[ObservedPod],
    revision: str = "rev1",
    state: RolloutState | None = None,
    **spec: Any,
) -> dict[str, Any]:
    """A fleet with the status derive_status writes, dumped as the operator patches it."""
    base = fleet(generation=3, **spec)
    status = derive_status(
        StatusInputs(
            fleet=base,
            update_revision=revision,
            pods=pods,
            plan=plan(base.spec.replicas, revision, pods, base.spec.paused),
            acted_on_generation=True,
            redis=None,
            metrics=None,
            now=NOW,
            rollout=state,
            target_revision="rev1" if state is not None else None,
        )
    )
    return base.model_copy(update={"status": status}).model_dump(by_alias=True, mode="json")


OPERATOR_CASES: dict[str, tuple[dict[str, Any], str]] = {
    "converged": (_operator_view([pod(0), pod(1), pod(2)]), "Healthy"),
    "crash looping": (
        _operator_view([pod(0), pod(1), pod(2, health=PodHealth.CRASH_LOOPING)]),
        "Degraded",
    ),
    "rolled back by a failed gate": (
        _operator_view(
            [pod(0), pod(1), pod(2)],
            revision="rev2",
            state=_rollout(RolloutPhase.ROLLED_BACK, 0, "gate failed at Initial step 1"),
        ),
        "Degraded",
    ),
    "rollout stuck": (
        _operator_view(
            [pod(0), pod(1), pod(2), pod(3, revision="rev2", health=PodHealth.STARTING)],
            revision="rev2",
            state=_rollout(RolloutPhase.DEGRADED, 1, "only 0/1 canary agents Ready"),
        ),
        "Degraded",
    ),
    "rollout analyzing": (
        _operator_view(
            [pod(0), pod(1), pod(2), pod(3, revision="rev2")],
            revision="rev2",
            state=_rollout(RolloutPhase.ANALYZING, 1, "soaking"),
        ),
        "Progressing",
    ),
    "scaling up": (_operator_view([pod(0)]), "Progressing"),
    "rollout paused": (
        _operator_view(
            [pod(0), pod(1), pod(2), pod(3, revision="rev2")],
            revision="rev2",
            state=_rollout(RolloutPhase.PAUSED, 1, "soaking"),
            rollout={"paused": True},
        ),
        "Suspended",
    ),
}


@pytest.mark.parametrize(("case", "expected"), [(k, v[1]) for k, v in OPERATOR_CASES.items()])
def test_health_of_operator_statuses(case: str, expected: str, lua_version: str) -> None:
    """Statuses built by the real model and derive_status, not by hand."""
    assert run_lua(HEALTH, OPERATOR_CASES[case][0], lua_version)["status"] == expected


# -- actions -----------------------------------------------------------------------------------

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


# -- the argocd-cm snippet -------------------------------------------------------------------


def test_argocd_cm_snippet_is_current() -> None:
    assert argocd_cm.OUTPUT.read_text() == argocd_cm.render(), (
        "charts/newfuse-operator/argocd/argocd-cm.yaml is stale: run python hack/argocd_cm.py"
    )
    assert argocd_cm.main(["--check"]) == 0


def test_argocd_cm_snippet_holds_the_scripts_verbatim() -> None:
    config = yaml.safe_load(argocd_cm.OUTPUT.read_text())
    assert config["kind"] == "ConfigMap"
    assert config["metadata"]["name"] == "argocd-cm"
    data = config["data"]
    assert set(data) == {
        "resource.customizations.health.newfuse.io_NewFuseAgent",
        "resource.customizations.actions.newfuse.io_NewFuseAgent",
    }
    assert data["resource.customizations.health.newfuse.io_NewFuseAgent"] == HEALTH.read_text()
    actions = yaml.safe_load(data["resource.customizations.actions.newfuse.io_NewFuseAgent"])
    assert actions["discovery.lua"] == DISCOVERY.read_text()
    assert {d["name"]: d["action.lua"] for d in actions["definitions"]} == {
        name: (ARGOCD / "actions" / name / "action.lua").read_text() for name in ACTIONS
    }


def test_argocd_cm_snippet_follows_a_changed_script(tmp_path: Path) -> None:
    copied = tmp_path / "argocd"
    shutil.copytree(ARGOCD, copied)
    health = copied / "health.lua"
    health.write_text(health.read_text().replace("Waiting for the operator", "Still waiting"))
    assert argocd_cm.render(copied) != argocd_cm.OUTPUT.read_text()
    assert "Still waiting" in yaml.safe_load(argocd_cm.render(copied))["data"][argocd_cm.HEALTH_KEY]
