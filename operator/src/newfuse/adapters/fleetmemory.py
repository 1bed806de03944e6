"""Fleet memory as handlers, the CLI and the gateway use it: texts in, texts out.

It embeds (off the event loop: a batch of MiniLM costs milliseconds of CPU each) with the model the
fleet's memory is active under, not the one this process would choose, so a writer that starts
during a model change still writes vectors every reader can compare; the re-embedder
(newfuse.adapters.reembed) fills in the next model's. Writes of a revision the fleet does not
trust yet are quarantined (newfuse.core.memory), as the fleet's summary in Redis says.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field

from newfuse.adapters import embedder as embedding
from newfuse.adapters.embedder import MINILM, Embedder
from newfuse.adapters.memoryport import MemoryBackend, MemoryFullError, Recalled, Vectors
from newfuse.core.memory import Settlement
from newfuse.wire.memory import DEFAULT_K, MAX_K, MemoryRecord, Scalar

Trust = Callable[[], Awaitable[Settlement]]


@dataclass(frozen=True)
class Memo:
    """One text to remember."""

    text: str
    metadata: Mapping[str, Scalar] = field(default_factory=dict)
    id: str | None = None  # default: a fresh UUID; giving one makes the write idempotent
    ttl_seconds: float | None = None


async def _trusted(revision: str) -> Settlement:
    return Settlement(revision)


class FleetMemory:
    """One fleet's memory, as seen by an agent (or tool) of one revision."""

    def __init__(
        self,
        backend: MemoryBackend,
        revision: str,
        *,
        trust: Trust | None = None,
        model: str = MINILM.id,
        embedders: Callable[[str], Embedder] | None = None,
    ) -> None:
        """Read and write ``backend`` as revision ``revision``.

        ``trust`` says which revision the fleet trusts now (default: this one, as the CLI and
        the gateway write as the fleet's operator); ``model`` is the model to start a fleet's
        memory with; later writes follow the fleet's active model.
        """
        self.backend, self.revision, self.model = backend, revision, model
        self._trust = trust or (lambda: _trusted(revision))
        self._embedders = embedders or embedding.embedder_for
        self._loaded: dict[str, Embedder] = {}

    async def remember(
        self,
        text: str,
        metadata: Mapping[str, Scalar] | None = None,
        *,
        memory_id: str | None = None,
        ttl_seconds: float | None = None,
    ) -> str:
        """Remember ``text``; its id (``memory_id`` makes a retried write idempotent)."""
        memo = Memo(text, metadata or {}, memory_id or uuid.uuid4().hex, ttl_seconds)
        await self.remember_many([memo])
        assert memo.id is not None
        return memo.id

    async def remember_many(self, memos: Sequence[Memo]) -> int:
        """Remember a batch in one embedding pass and one Redis step; how many were new."""
        if not memos:
            return 0
        now_ms = await self.backend.now_ms()  # the store's clock: agents' clocks drift
        records = [self._record(memo, now_ms) for memo in memos]
        return await self._store(records, (await self._trust()).quarantines(self.revision))

    async def restore(self, records: Sequence[MemoryRecord]) -> int:
        """Store exported records as they were (revision, times), unquarantined; how many new.

        Re-embedded under the fleet's active model: an export carries texts, not vectors.
        """
        return await self._store(records, None) if records else 0

    async def _store(self, records: Sequence[MemoryRecord], quarantine: str | None) -> int:
        texts, swept = [r.text for r in records], False
        while True:
            model = await self.backend.active_model() or self.model
            vectors = await self.embed(model, texts)
            try:
                return await self.backend.remember(records, vectors, model, quarantine)
            except MemoryFullError:
                if swept or not await self.backend.sweep():
                    raise
                swept = True  # expired memories made room: once more
            except ValueError:
                if await self.backend.active_model() == model:
                    raise
                # A cutover came between reading the model and writing: embed again.

    async def recall(
        self, query: str, k: int = DEFAULT_K, where: Mapping[str, Scalar] | None = None
    ) -> list[Recalled]:
        """The ``k`` memories nearest ``query`` that this revision may see, best first."""
        if not 1 <= k <= MAX_K:
            raise ValueError(f"k must be from 1 to {MAX_K}, got {k}")
        model = await self.backend.active_model()
        while model is not None:
            [vector] = await self.embed(model, [query])
            try:
                return await self.backend.recall(vector, model, k, self.revision, where)
            except ValueError:
                latest = await self.backend.active_model()
                if latest == model:
                    raise
                model = latest  # a cutover came between reading the model and searching
        return []

    async def forget(self, *memory_ids: str) -> int:
        """Forget these memories; how many existed."""
        return await self.backend.forget(memory_ids)

    async def embed(self, model: str, texts: Sequence[str]) -> Vectors:
        """``texts`` embedded by ``model``, in a worker thread."""
        embedder = self._loaded.get(model)
        if embedder is None:
            embedder = self._loaded[model] = await asyncio.to_thread(self._embedders, model)
        return await asyncio.to_thread(embedder.encode, list(texts))

    def _record(self, memo: Memo, now_ms: int) -> MemoryRecord:
        expires = None if memo.ttl_seconds is None else now_ms + int(memo.ttl_seconds * 1000)
        return MemoryRecord(
            id=memo.id or uuid.uuid4().hex,
            text=memo.text,
            metadata=dict(memo.metadata),
            revision=self.revision,
            created_ms=now_ms,
            expires_ms=expires,
        )
