"""The one Dockerfile's `operator` and `agent` targets, checked on paper (CI has no Docker engine).

Both targets start modules that exist and are packaged scripts, the chart's command runs the
operator image's entry point, both images run as a numeric non-root user, expose the ports their
processes listen on and install the whole wheel from one shared build stage, and both carry the
same label keys; the file's base arguments are BASE and the Makefile's UV_VERSION.
"""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from pathlib import Path

import pytest
import yaml

from kind_path import (
    DOCKERFILE,
    ROOT,
    TARGETS,
    dockerfile_stages,
    global_args,
    target_instructions,
    target_stages,
)
from newfuse.core.pods import AGENT_HTTP_PORT


def instructions_of(target: str, word: str) -> list[str]:
    return [rest for w, rest in target_instructions(DOCKERFILE, target) if w == word]


def entrypoint(target: str) -> list[str]:
    [argv] = [json.loads(rest) for rest in instructions_of(target, "ENTRYPOINT")]
    assert isinstance(argv, list), "exec form: no shell needed at run time"
    return [str(a) for a in argv]


def test_the_file_has_both_targets_on_the_base_argument() -> None:
    stages = dockerfile_stages(DOCKERFILE)
    assert set(TARGETS) <= set(stages)
    for stage in stages.values():
        assert stage.base == "${BASE}" or stage.base in stages, stage.name


@pytest.mark.parametrize("which", TARGETS)
def test_the_entrypoint_module_exists_and_is_a_packaged_script(which: str) -> None:
    argv = entrypoint(which)
    assert argv[1] == "-m", argv
    module = argv[2]
    assert importlib.util.find_spec(f"{module}.__main__") is not None, module
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert f"{module}.__main__:main" in scripts.values()
    assert module == {"operator": "newfuse", "agent": "newfuse_agent"}[which]


def test_the_charts_command_runs_the_operator_images_entrypoint() -> None:
    argv = entrypoint("operator")
    template = (ROOT / "charts" / "newfuse-operator" / "templates" / "deployment.yaml").read_text()
    match = re.search(r"^\s*command:\s*(\[.*\])\s*$", template, re.MULTILINE)
    assert match, "the chart's operator container has no command"
    command = json.loads(match.group(1))
    assert command[1:] == argv[1:]
    # The chart's bare `python` is the entry point's interpreter through the image's PATH.
    env = " ".join(instructions_of("operator", "ENV"))
    assert f"PATH={Path(argv[0]).parent}:$PATH" in env
    assert Path(argv[0]).name == command[0]


@pytest.mark.parametrize("which", TARGETS)
def test_the_image_is_non_root_and_installs_the_whole_wheel(which: str) -> None:
    users = instructions_of(which, "USER")
    assert users[-1] == "65532:65532", "numeric, so the kubelet can check runAsNonRoot"
    # COPY <source>... <destination>, for the build context (not --from another stage), in any
    # stage the target's build runs.
    stages = dockerfile_stages(DOCKERFILE)
    sources = {
        src
        for name in target_stages(DOCKERFILE, which)
        for word, rest in stages[name].instructions
        if word == "COPY" and "--from" not in rest
        for src in rest.split()[:-1]
    }
    assert {"pyproject.toml", "uv.lock", "README.md"} <= sources, "hatchling needs them"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for package in pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        assert any(package.startswith(src + "/") for src in sources), f"{package} is not copied"


def test_both_targets_share_the_build_and_runtime_stages() -> None:
    operator, agent = (target_stages(DOCKERFILE, t) - {t} for t in ("operator", "agent"))
    assert operator == agent == {"build", "runtime"}, "one wheel, one venv, for both images"
    for which in TARGETS:
        own = dockerfile_stages(DOCKERFILE)[which]
        assert own.base == "runtime"
        assert {word for word, _ in own.instructions} <= {"LABEL", "EXPOSE", "ENTRYPOINT"}, which


@pytest.mark.parametrize("which", TARGETS)
def test_the_image_exposes_the_ports_its_process_listens_on(which: str) -> None:
    exposed = {int(p) for rest in instructions_of(which, "EXPOSE") for p in rest.split()}
    values = yaml.safe_load((ROOT / "charts" / "newfuse-operator" / "values.yaml").read_text())
    expected = {
        # The chart's /metrics port and the kopf liveness endpoint's.
        "operator": {values["metrics"]["port"], values["operator"]["healthPort"]},
        # The port the operator's agent pods probe and scrape.
        "agent": {AGENT_HTTP_PORT},
    }[which]
    assert exposed == expected


def test_the_base_arguments_and_the_label_keys() -> None:
    args = global_args(DOCKERFILE)
    assert set(args) == {"BASE", "UV_VERSION"}
    makefile = (ROOT / "Makefile").read_text()
    uv_version = re.search(r"^UV_VERSION := (\S+)$", makefile, re.MULTILINE)
    assert uv_version
    assert args["UV_VERSION"] == uv_version.group(1)
    labels = {}
    for which in TARGETS:
        text = " ".join(instructions_of(which, "LABEL"))
        labels[which] = dict(re.findall(r'(org\.opencontainers\.image\.[a-z]+)="([^"]*)"', text))
    assert set(labels["operator"]) == set(labels["agent"]), "the same label keys on both images"
    for key in ("title", "description", "licenses"):
        assert f"org.opencontainers.image.{key}" in labels["operator"]
    assert labels["operator"]["org.opencontainers.image.title"] == "newfuse-operator"
    assert labels["agent"]["org.opencontainers.image.title"] == "newfuse-agent"
