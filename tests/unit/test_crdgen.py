"""The generated CRD is structural, carries our rules, and the committed YAML is current."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from newfuse.api import crdgen

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("relative", crdgen.OUTPUTS, ids=str)
def test_committed_crd_is_what_the_models_generate(relative: Path) -> None:
    committed = (ROOT / relative).read_text()
    assert committed == crdgen.render(), f"{relative} is stale: run `make crds`"


def _walk(node: Any, path: str = ""):  # type: ignore[no-untyped-def]
    yield path, node
    if isinstance(node, dict):
        for key, value in node.items():
            yield from _walk(value, f"{path}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            yield from _walk(value, f"{path}[{i}]")


def test_schema_is_structural() -> None:
    schema = crdgen.openapi_schema()
    for path, node in _walk(schema):
        if not isinstance(node, dict):
            continue
        assert "$ref" not in node, path
        assert "title" not in node, path
        assert node.get("additionalProperties") is not False, path
        if "anyOf" in node:
            assert node.get("x-kubernetes-int-or-string") is True, path


def test_schema_shape() -> None:
    crd = crdgen.crd()
    version = crd["spec"]["versions"][0]
    spec = version["schema"]["openAPIV3Schema"]["properties"]["spec"]
    assert spec["required"] == ["image"]
    assert spec["properties"]["replicas"]["minimum"] == 0
    assert spec["properties"]["imagePullPolicy"]["nullable"] is True
    assert spec["properties"]["capabilities"]["x-kubernetes-list-type"] == "set"
    cpu = spec["properties"]["resources"]["properties"]["requests"]["additionalProperties"]
    assert cpu["x-kubernetes-int-or-string"] is True
    rules = [r["rule"] for r in spec["properties"]["gateway"]["x-kubernetes-validations"]]
    assert "!has(self.model) || has(self.endpoint)" in rules
    assert version["subresources"]["scale"]["labelSelectorPath"] == ".status.selector"
    assert {c["name"] for c in version["additionalPrinterColumns"]} >= {
        "Ready",
        "Phase",
        "Revision",
        "Age",
    }
    assert crd["spec"]["names"]["shortNames"] == ["nfa"]


def test_exclusive_bounds_use_the_openapi_3_0_form() -> None:
    converted = crdgen.structural({"type": "number", "exclusiveMinimum": 0}, {})
    assert converted == {"type": "number", "minimum": 0, "exclusiveMinimum": True}


def test_unsupported_union_is_refused() -> None:
    with pytest.raises(crdgen.SchemaError, match="unions"):
        crdgen.structural({"anyOf": [{"type": "string"}, {"type": "integer"}]}, {}, ".x")


def test_check_mode_reports_stale_files(tmp_path: Path) -> None:
    assert crdgen.main(["--root", str(tmp_path), "--check"]) == 1
    assert crdgen.main(["--root", str(tmp_path)]) == 0
    assert crdgen.main(["--root", str(tmp_path), "--check"]) == 0
