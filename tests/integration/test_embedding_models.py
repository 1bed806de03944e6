"""The two packaged embedding models: both load from their packages, and they disagree.

Each must give unit vectors of its stated width and rank a paraphrase above an unrelated
sentence. Their vectors of the same text must differ, which is why a model change re-embeds
every memory rather than mixing the two models' vectors.
"""

from __future__ import annotations

import numpy as np
import pytest

from newfuse.adapters.embedder import MINILM, MINILM_L3, MODELS, Embedder, embedder_for

pytestmark = pytest.mark.integration

ANCHOR = "The deployment failed because the container image could not be pulled."
PARAPHRASE = "Rollout broke: the node was unable to download the container image."
UNRELATED = "She baked a loaf of sourdough bread for the picnic on Sunday."


@pytest.fixture(scope="module")
def embedders() -> dict[str, Embedder]:
    return {model_id: embedder_for(model_id, threads=1) for model_id in MODELS}


def test_the_registry_holds_both_models_and_keeps_minilm_the_default() -> None:
    assert set(MODELS) == {MINILM.id, MINILM_L3.id}
    assert MINILM.id == "all-MiniLM-L6-v2@int8-onnx-1.0.0"
    assert Embedder(threads=1).model == MINILM


@pytest.mark.parametrize("model_id", sorted(MODELS))
def test_each_model_gives_unit_vectors_and_ranks_a_paraphrase_above_noise(
    embedders: dict[str, Embedder], model_id: str
) -> None:
    embedder = embedders[model_id]
    vectors = embedder.encode([ANCHOR, PARAPHRASE, UNRELATED])
    assert embedder.model.id == model_id
    assert vectors.dtype == np.float32
    assert vectors.shape == (3, MODELS[model_id].dim)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-4)
    close, far = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    print(f"figures: {model_id} paraphrase {close:.3f}, unrelated {far:.3f}")
    assert close > far + 0.1
    assert embedder.encode([]).shape == (0, MODELS[model_id].dim)


def test_batches_give_the_same_vectors_as_one_text_at_a_time(
    embedders: dict[str, Embedder],
) -> None:
    texts = [ANCHOR, "short", UNRELATED * 3]
    for embedder in embedders.values():
        together = embedder.encode(texts)
        alone = np.concatenate([embedder.encode([t]) for t in texts])
        assert np.allclose(together, alone, atol=1e-4), embedder.model.id


def test_the_two_models_vectors_differ_so_a_change_needs_re_embedding(
    embedders: dict[str, Embedder],
) -> None:
    texts = [ANCHOR, PARAPHRASE, UNRELATED]
    old, new = embedders[MINILM.id].encode(texts), embedders[MINILM_L3.id].encode(texts)
    same_text = np.sum(old * new, axis=1)
    print(f"figures: cosine of the same text across models {np.round(same_text, 3).tolist()}")
    assert float(same_text.max()) < 0.9


def test_an_unknown_model_id_is_refused_naming_it_and_the_known_ones() -> None:
    with pytest.raises(ValueError, match="no-such-model@1") as refused:
        embedder_for("no-such-model@1")
    assert MINILM.id in str(refused.value)
    assert MINILM_L3.id in str(refused.value)
