"""The operator's and the agent's Dockerfiles, checked on paper (CI has no Docker engine).

Both start modules that exist and are packaged scripts, the chart's command runs the operator
image's entry point, both images run as a numeric non-root user and install the whole wheel, and
both share their base arguments and label keys.
"""

from __future__ import annotations

import importlib.util
import json
import re
import tomllib
from pathlib import Path

import pytest

from kind_path import DOCKERFILES, ROOT, dockerfile_instructions, global_args


def entrypoint(path: Path) -> list[str]:
    [argv] = [
        json.loads(rest) for word, rest in dockerfile_instructions(path) if word == "ENTRYPOINT"
    ]
    assert isinstance(argv, list)
    return [str(a) for a in argv]


@pytest.mark.parametrize("which", sorted(DOCKERFILES))
def test_the_entrypoint_module_exists_and_is_a_packaged_script(which: str) -> None:
    argv = entrypoint(DOCKERFILES[which])
    assert argv[1] == "-m", argv
    module = argv[2]
    assert importlib.util.find_spec(f"{module}.__main__") is not None, module
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert f"{module}.__main__:main" in scripts.values()
    assert module == {"operator": "newfuse", "agent": "newfuse_agent"}[which]


def test_the_charts_command_runs_the_operator_images_entrypoint() -> None:
    argv = entrypoint(DOCKERFILES["operator"])
    template = (ROOT / "charts" / "newfuse-operator" / "templates" / "deployment.yaml").read_text()
    match = re.search(r"^\s*command:\s*(\[.*\])\s*$", template, re.MULTILINE)
    assert match, "the chart's operator container has no command"
    command = json.loads(match.group(1))
    assert command[1:] == argv[1:]
    # The chart's bare `python` is the entry point's interpreter through the image's PATH.
    env = " ".join(
        rest for word, rest in dockerfile_instructions(DOCKERFILES["operator"]) if word == "ENV"
    )
    assert f"PATH={Path(argv[0]).parent}:$PATH" in env
    assert Path(argv[0]).name == command[0]


@pytest.mark.parametrize("which", sorted(DOCKERFILES))
def test_the_image_is_non_root_and_installs_the_whole_wheel(which: str) -> None:
    instructions = dockerfile_instructions(DOCKERFILES[which])
    users = [rest for word, rest in instructions if word == "USER"]
    assert users[-1] == "65532:65532", "numeric, so the kubelet can check runAsNonRoot"
    # COPY <source>... <destination>, for the build context (not --from another stage).
    sources = {
        src
        for word, rest in instructions
        if word == "COPY" and "--from" not in rest
        for src in rest.split()[:-1]
    }
    assert {"pyproject.toml", "uv.lock", "README.md"} <= sources, "hatchling needs them"
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    for package in pyproject["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]:
        assert any(package.startswith(src + "/") for src in sources), f"{package} is not copied"


def test_both_dockerfiles_share_base_arguments_and_label_keys() -> None:
    operator_args, agent_args = (global_args(p) for p in DOCKERFILES.values())
    assert set(operator_args) == set(agent_args) == {"BASE", "UV_VERSION"}
    makefile = (ROOT / "Makefile").read_text()
    uv_version = re.search(r"^UV_VERSION := (\S+)$", makefile, re.MULTILINE)
    assert uv_version
    assert operator_args["UV_VERSION"] == agent_args["UV_VERSION"] == uv_version.group(1)
    labels = []
    for path in DOCKERFILES.values():
        text = " ".join(rest for word, rest in dockerfile_instructions(path) if word == "LABEL")
        labels.append(dict(re.findall(r'(org\.opencontainers\.image\.[a-z]+)="([^"]*)"', text)))
    assert set(labels[0]) == set(labels[1]), "the same label keys on both images"
    for key in ("title", "description", "licenses"):
        assert f"org.opencontainers.image.{key}" in labels[0]
    assert labels[0]["org.opencontainers.image.title"] == "newfuse-operator"
