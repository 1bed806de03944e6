"""What fleet memory needs of a vector store: one interface, a Redis default and pgvector beside it.

A backend keeps one fleet's memories: records, their vectors per embedding model, and the
quarantine of a canary's writes (newfuse.core.memory). Embedding is not its business: callers
hand it vectors, stamped with the model that made them, so a backend never compares two models'
vectors. Re-embedding after a model change goes through `missing`, `put_vectors` and `cutover`,
which every backend implements the same way: the active model keeps answering recalls until the
new one covers every record, then one atomic step makes it active.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt

from newfuse.wire.memory import MemoryRecord, Scalar

Vectors = npt.NDArray[np.float32]


class MemoryFullError(RuntimeError):
    """The fleet holds its maximum of memories."""


@dataclass(frozen=True)
class Recalled:
    """One memory a recall found, with its cosine similarity to the query."""

    record: MemoryRecord
    score: float

    def to_json(self) -> dict[str, object]:
        """What the CLI and the fleet API show of it (one shape for both)."""
        r = self.record
        return {"id": r.id, "score": self.score, "text": r.text, "metadata": r.metadata,
                "revision": r.revision}  # fmt: skip


class MemoryBackend(Protocol):
    """One fleet's memories in a vector store."""

    async def now_ms(self) -> int:
        """The store's clock (ms since the epoch): expiry is judged by it, not by agents'."""

    async def active_model(self) -> str | None:
        """The embedding model recalls use (None until the first memory is stored)."""

    async def remember(
        self,
        records: Sequence[MemoryRecord],
        vectors: Vectors,
        model: str,
        quarantine: str | None = None,
    ) -> int:
        """Store ``records`` with their ``model`` vectors; how many were new.

        Quarantined for revision ``quarantine`` when given. Raises MemoryFullError past the
        fleet's limit (storing none of them) and ValueError when ``model`` is not active.
        """

    async def recall(
        self,
        query: Vectors,
        model: str,
        k: int,
        reader: str,
        where: Mapping[str, Scalar] | None = None,
    ) -> list[Recalled]:
        """The ``k`` memories nearest ``query`` (a ``model`` vector), best first.

        Only those an agent of revision ``reader`` may see, whose metadata holds every pair of
        ``where``. Raises ValueError when ``model`` is not the active model.
        """

    async def forget(self, ids: Sequence[str]) -> int:
        """Delete these memories; how many existed."""

    async def promote(self, revision: str) -> int:
        """Lift ``revision``'s quarantine (its rollout completed); how many memories."""

    async def discard(self, revision: str) -> int:
        """Delete ``revision``'s quarantined memories (rolled back); how many."""

    async def settle(self, trusted: str, pending: str | None) -> tuple[int, int]:
        """Settle the quarantine by level: (lifted, deleted).

        Lift ``trusted``'s writes and delete those of every other revision but ``pending``'s
        (newfuse.core.memory.settlement says which from the fleet's summary), in one atomic step.
        """

    async def sweep(self) -> int:
        """Delete expired memories; how many."""

    async def size(self) -> int:
        """How many memories the fleet holds (quarantined ones included)."""

    def records(self) -> AsyncIterator[MemoryRecord]:
        """Every unexpired, unquarantined record (export), in no particular order."""

    async def missing(self, model: str, limit: int) -> list[MemoryRecord]:
        """Up to ``limit`` records that have no ``model`` vector yet (re-embedding).

        An unfinished re-embedding to another model is abandoned (its vectors dropped).
        """

    async def put_vectors(self, model: str, ids: Sequence[str], vectors: Vectors) -> int:
        """Store ``model`` vectors for records that still exist; how many."""

    async def cutover(self, model: str) -> bool:
        """Make ``model`` active if every record has its vector, dropping the old one's.

        False, and nothing changed, while some record lacks one.
        """
