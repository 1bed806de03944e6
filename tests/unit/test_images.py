"""The pure parts of the local image build (hack/localcluster/images.py, imagetools.py).

Cache keys and content tags decide whether minutes of debootstrap and buildah run again, and which
exact image a test deploys: each must change with every input and with nothing else. The names
containerd gives a pod spec's references decide whether the kubelet finds an imported image or
tries a registry this machine cannot reach.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path
from typing import Any

import pytest

from localcluster import images
from localcluster.imagetools import buildah_name, containerd_name, content_hash, inputs_key


def test_inputs_key_is_stable_and_changes_with_each_input() -> None:
    key = inputs_key("bookworm", "python3", "layout=1")
    assert re.fullmatch(r"[0-9a-f]{16}", key)
    assert inputs_key("bookworm", "python3", "layout=1") == key
    for changed in (("trixie", "python3", "layout=1"), ("bookworm", "python3", "layout=2")):
        assert inputs_key(*changed) != key
    # No input can run into the next.
    assert inputs_key("ab", "c") != inputs_key("a", "bc")


@pytest.mark.parametrize(
    ("attribute", "value"),
    [
        ("SUITE", "trixie"),
        ("MIRROR", "http://mirror.example/debian"),
        ("PACKAGES", (*images.PACKAGES, "curl")),
        ("BASE_LAYOUT", images.BASE_LAYOUT + 1),
    ],
)
def test_base_key_changes_with_each_input(
    monkeypatch: pytest.MonkeyPatch, attribute: str, value: Any
) -> None:
    before = images.base_key()
    monkeypatch.setattr(images, attribute, value)
    assert images.base_key() != before
    assert images.base_image_ref().endswith(":" + images.base_key())


def test_base_key_ignores_package_order(monkeypatch: pytest.MonkeyPatch) -> None:
    before = images.base_key()
    monkeypatch.setattr(images, "PACKAGES", tuple(reversed(images.PACKAGES)))
    assert images.base_key() == before


def tree(root: Path) -> list[Path]:
    (root / "src" / "pkg" / "__pycache__").mkdir(parents=True)
    (root / "src" / "pkg" / "mod.py").write_text("x = 1\n")
    (root / "Dockerfile").write_text("FROM ${BASE}\n")
    return [Path("Dockerfile"), Path("src")]


def test_content_hash_ignores_bytecode_caches(tmp_path: Path) -> None:
    inputs = tree(tmp_path)
    before = content_hash(tmp_path, inputs)
    (tmp_path / "src" / "pkg" / "__pycache__" / "mod.cpython-311.pyc").write_bytes(b"\0")
    (tmp_path / "src" / "pkg" / "stray.pyc").write_bytes(b"\0")
    (tmp_path / "src" / ".mypy_cache").mkdir()
    (tmp_path / "src" / ".mypy_cache" / "x.json").write_text("{}")
    assert content_hash(tmp_path, inputs) == before


def test_content_hash_changes_with_content_names_mode_and_extras(tmp_path: Path) -> None:
    inputs = tree(tmp_path)
    module = tmp_path / "src" / "pkg" / "mod.py"
    seen = {content_hash(tmp_path, inputs)}
    module.write_text("x = 2\n")
    seen.add(content_hash(tmp_path, inputs))
    module.chmod(0o755)
    seen.add(content_hash(tmp_path, inputs))
    module.rename(module.with_name("other.py"))
    seen.add(content_hash(tmp_path, inputs))
    (tmp_path / "src" / "pkg" / "new.py").write_text("")
    seen.add(content_hash(tmp_path, inputs))
    seen.add(content_hash(tmp_path, inputs, "base=other"))
    assert len(seen) == 6


def test_content_hash_refuses_a_missing_input(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        content_hash(tmp_path, [Path("gone")])


def test_project_refs_are_content_tags_of_the_tree_and_the_base(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    dockerfiles = {image.dockerfile for image in images.PROJECT_IMAGES.values()}
    for relative in (*images.PROJECT_INPUTS, *dockerfiles, ".dockerignore"):
        path = tmp_path / relative
        if "." in Path(relative).name or relative.endswith("Dockerfile"):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(relative)
        else:
            (path / "pkg").mkdir(parents=True)
            (path / "pkg" / "__init__.py").write_text("")
    monkeypatch.setattr(images, "REPO_ROOT", tmp_path)
    agent = images.project_image_ref("agent", "localhost/base:1")
    operator = images.project_image_ref("operator", "localhost/base:1")
    assert re.fullmatch(r"newfuse/agent:dev-[0-9a-f]{12}", agent)
    assert re.fullmatch(r"newfuse/operator:dev-[0-9a-f]{12}", operator)
    assert agent.split(":")[1] != operator.split(":")[1], "each image's target is an input"
    assert images.project_image_ref("agent", "localhost/base:2") != agent
    for dockerfile in dockerfiles:  # an input of each image built from it
        (tmp_path / dockerfile).write_text("changed")
    assert images.project_image_ref("operator", "localhost/base:1") != operator
    assert images.project_image_ref("agent", "localhost/base:1") != agent
    agent = images.project_image_ref("agent", "localhost/base:1")
    (tmp_path / "operator/src/pkg/__pycache__").mkdir()
    (tmp_path / "operator/src/pkg/__pycache__/x.pyc").write_bytes(b"\0")
    assert images.project_image_ref("agent", "localhost/base:1") == agent
    (tmp_path / "uv.lock").write_text("changed")
    assert images.project_image_ref("agent", "localhost/base:1") != agent


def test_pause_ref_is_known_without_building_anything(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_subprocess(*args: object, **kwargs: object) -> None:
        raise AssertionError("pause_image_ref must not run anything")

    monkeypatch.setattr(subprocess, "run", no_subprocess)
    monkeypatch.setattr(subprocess, "Popen", no_subprocess)
    ref = images.pause_image_ref()
    assert re.fullmatch(r"newfuse/pause:[0-9a-f]{12}", ref)
    assert images.pause_image_ref() == ref


def test_pause_source_is_stdlib_only() -> None:
    go_mod = (images.PAUSE_SOURCE / "go.mod").read_text()
    assert "require" not in go_mod, "the pause program must build without the module proxy"


@pytest.mark.parametrize(
    ("ref", "name"),
    [
        ("newfuse/agent:dev-0123456789ab", "docker.io/newfuse/agent:dev-0123456789ab"),
        ("newfuse/pause:abc", "docker.io/newfuse/pause:abc"),
        ("python:3.11-slim", "docker.io/library/python:3.11-slim"),
        ("busybox", "docker.io/library/busybox:latest"),
        ("localhost/newfuse/python-base:1", "localhost/newfuse/python-base:1"),
        ("registry.example:5000/a/b:1", "registry.example:5000/a/b:1"),
        ("ghcr.io/org/img", "ghcr.io/org/img:latest"),
        ("docker.io/newfuse/agent:x", "docker.io/newfuse/agent:x"),
    ],
)
def test_containerd_name_is_how_a_pod_spec_reference_resolves(ref: str, name: str) -> None:
    assert containerd_name(ref) == name


def test_buildah_stores_short_names_under_localhost() -> None:
    assert buildah_name("newfuse/agent:dev-1") == "localhost/newfuse/agent:dev-1"
    assert buildah_name("localhost/newfuse/python-base:1") == "localhost/newfuse/python-base:1"


def test_cache_dir_follows_newfuse_cache(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("NEWFUSE_CACHE", str(tmp_path))
    assert images.cache_dir() == tmp_path / "images"
    monkeypatch.delenv("NEWFUSE_CACHE")
    assert images.cache_dir() == Path.home() / ".cache" / "newfuse" / "images"


def test_each_image_is_a_target_of_a_dockerfile_on_the_base_argument() -> None:
    for which, image in images.PROJECT_IMAGES.items():
        text = (images.REPO_ROOT / image.dockerfile).read_text()
        froms = re.findall(r"^FROM (\S+)(?: AS (\S+))?", text, re.MULTILINE)
        assert froms, image
        stages = {name for _, name in froms if name}
        assert image.target in stages, f"{which}: no stage {image.target} in {image.dockerfile}"
        # Every stage starts from BASE or from an earlier stage of the same file.
        assert {base for base, _ in froms} - stages == {"${BASE}"}, image
