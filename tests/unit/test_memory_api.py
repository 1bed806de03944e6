"""spec.memory and its copies: the API's model names and defaults against the wire's, the agent's
and the packaged models', and a manifest's bad memory settings refused naming the field."""

from __future__ import annotations

import pytest
import yaml
from pydantic import ValidationError

from localcluster.binaries import REPO_ROOT
from newfuse.adapters.embedder import MODELS
from newfuse.api import memory as api
from newfuse.wire import memory as wire
from newfuse_agent.config import AgentConfig

pytestmark = pytest.mark.unit


def test_the_model_names_and_defaults_are_one_list_everywhere() -> None:
    names = {m.value for m in api.EmbeddingModelName}
    assert names == {m.value for m in wire.MemoryModel} == set(MODELS)
    assert api.DEFAULT_MAX_ITEMS == wire.DEFAULT_MAX_ITEMS
    agent = AgentConfig(agent_id="a", fleet="f")
    spec = api.MemorySpec()
    assert (agent.memory_model, agent.memory_max_items, agent.memory_ttl_seconds) == (
        spec.model.value, spec.max_items, spec.ttl_seconds,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("given", "field"),
    [({"model": "text-embedding-3-large"}, "model"), ({"maxItems": 0}, "maxItems"),
     ({"ttlSeconds": 0}, "ttlSeconds")],
)  # fmt: skip
def test_bad_memory_settings_are_refused_naming_the_field(
    given: dict[str, object], field: str
) -> None:
    with pytest.raises(ValidationError, match=field):
        api.MemorySpec.model_validate(given)


def test_the_crd_refuses_an_unknown_model_at_admission() -> None:
    crd = yaml.safe_load((REPO_ROOT / "crds/newfuse.io_newfuseagents.yaml").read_text())
    schema = crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    memory = schema["properties"]["spec"]["properties"]["memory"]["properties"]
    assert set(memory["model"]["enum"]) == set(MODELS)
    assert memory["maxItems"]["minimum"] == 1
