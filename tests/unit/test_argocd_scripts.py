"""The Argo CD scripts for NewFuseAgent: their sandbox, what they read, and the argocd-cm snippet.

The sandbox (tests/argocd_lua.py) refuses what Argo CD refuses, under Lua 5.1 and 5.4. Every
status and spec field the scripts read, and every value they compare with, must exist in the API
models, so a renamed field or a changed enum breaks these tests even where no sample would
notice. The argocd-cm snippet hack/argocd_cm.py writes must be current and hold the scripts
verbatim. The health check is in test_argocd_health.py, the actions in test_argocd_actions.py.
"""

from __future__ import annotations

import importlib
import re
import shutil
from enum import StrEnum
from pathlib import Path

import pytest
import yaml
from pydantic import BaseModel

import argocd_cm
from argocd_lua import ACTIONS, ARGOCD, DISCOVERY, HEALTH, run_lua
from newfuse.api.rollout import RolloutPhase, RolloutState
from newfuse.api.v1alpha1 import (
    ConditionStatus,
    ConditionType,
    NewFuseAgentSpec,
    NewFuseAgentStatus,
    ObjectMeta,
    Phase,
    RolloutSpec,
    RolloutStrategy,
)


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
