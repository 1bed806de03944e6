"""Fleet memory's default backend: records and vectors in Redis, an HNSW index in each reader.

Debian's Redis 7.0 has no vector search, so the vectors are stored in Redis and searched by a
faiss HNSW graph (newfuse.adapters.vectorindex) that every reading process keeps in memory. It
follows the fleet's memory by the deltas of `memory:log` rather than reloading it, and reloads
only when the active model changed or its place in the log was trimmed away. HNSW cannot delete,
so a forgotten memory is skipped until deletions pass a quarter of the graph, which is then
rebuilt. Connected as the fleet's own Redis user, a reader cannot reach another fleet's keys
whatever names it uses: the ACL refuses them.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final, cast

import numpy as np
import redis.asyncio as aioredis
from pydantic import ValidationError

from newfuse.adapters import quarantine
from newfuse.adapters.memoryport import MemoryFullError, Recalled, Vectors
from newfuse.adapters.vectorindex import HnswIndex
from newfuse.core.memory import visible
from newfuse.wire import memory
from newfuse.wire.keys import FleetKeys
from newfuse.wire.memory import (
    DEFAULT_MAX_ITEMS,
    LogOp,
    MemoryRecord,
    Scalar,
    decode_vector,
    encode_vector,
)

_PAGE: Final = 1_000
_Entries = list[tuple[str, dict[str, str]]]
_REBUILD_SHARE: Final = 0.25


class _Graph:
    """One model's HNSW graph over the fleet's memories, and where it stands in the log."""

    def __init__(self, model: str, last: str) -> None:
        self.model, self.last = model, last
        self.index: HnswIndex | None = None
        self.records: dict[str, MemoryRecord] = {}
        self.number: dict[str, int] = {}
        self.names: list[str] = []
        self.dead = 0

    def add(self, found: list[tuple[MemoryRecord, Vectors]]) -> None:
        fresh = [(r, v) for r, v in found if r.id not in self.number]
        if not fresh:
            return
        if self.index is None:
            self.index = HnswIndex(len(fresh[0][1]))
        start = len(self.names)
        for record, _ in fresh:
            self.number[record.id] = len(self.names)
            self.names.append(record.id)
            self.records[record.id] = record
        ids = np.arange(start, len(self.names), dtype=np.int64)
        self.index.add(ids, np.stack([v for _, v in fresh]))

    def delete(self, memory_id: str) -> None:
        if self.records.pop(memory_id, None) is not None:
            self.number.pop(memory_id)
            self.dead += 1

    @property
    def stale(self) -> bool:
        return self.dead > _REBUILD_SHARE * max(len(self.names), 1)


@dataclass(frozen=True)
class _Filter:
    """What a reader may recall: the quarantine, expiry by Redis' clock, a metadata match."""

    held: dict[str, str]
    reader: str
    now_ms: int
    where: Mapping[str, Scalar]

    def keeps(self, record: MemoryRecord) -> bool:
        return visible(record, self.held, self.reader, self.now_ms) and all(
            record.metadata.get(f) == v for f, v in self.where.items()
        )

    def search(self, graph: _Graph, index: HnswIndex, query: Vectors, k: int) -> list[Recalled]:
        """The graph's ``k`` best that pass, asking it for more while filters thin them out."""
        total = len(graph.names)
        fetch = min(4 * k + len(self.held), total)
        while True:
            ids, scores = index.search(query, fetch)
            found: dict[str, Recalled] = {}
            for number, score in zip(ids[0], scores[0], strict=True):
                record = graph.records.get(graph.names[number]) if number >= 0 else None
                # A memory deleted and stored again under its id has two places in the graph.
                if record is not None and record.id not in found and self.keeps(record):
                    found[record.id] = Recalled(record, float(score))
            if len(found) >= k or fetch >= total:
                return list(found.values())[:k]
            fetch = min(fetch * 4, total)


class RedisMemory:
    """One fleet's memories in Redis (a MemoryBackend)."""

    def __init__(
        self, client: aioredis.Redis, keys: FleetKeys, max_items: int = DEFAULT_MAX_ITEMS
    ) -> None:
        """Keep ``keys``' fleet's memories through ``client``, at most ``max_items``."""
        self.client, self.keys, self.max_items = client, keys, max_items
        self._scripts = {
            name: client.register_script(getattr(memory, f"{name}_LUA"))
            for name in ("REMEMBER", "FORGET", "SETTLE", "PUT_VECTORS", "CUTOVER")
        }
        self._graph: _Graph | None = None
        self._lock = asyncio.Lock()

    @property
    def _written(self) -> list[str]:
        return quarantine.written_keys(self.keys)

    async def active_model(self) -> str | None:
        """The embedding model recalls use (None until the first memory is stored)."""
        return cast(str | None, await self.client.get(self.keys.memory_model))

    async def remember(
        self,
        records: Sequence[MemoryRecord],
        vectors: Vectors,
        model: str,
        quarantine: str | None = None,
    ) -> int:
        """Store ``records`` with their ``model`` vectors; how many were new."""
        k = self.keys
        args: list[str | int] = [model, self.max_items, quarantine or ""]
        for record, vector in zip(records, vectors, strict=True):
            args += [record.id, record.model_dump_json(), encode_vector(vector)]
        keys = [k.memory, k.memory_quarantine, k.memory_vectors, k.memory_model, k.memory_log]
        stored = int(await self._scripts["REMEMBER"](keys=keys, args=args))
        if stored == -1:
            raise MemoryFullError(
                f"fleet {k.namespace}/{k.fleet} may hold {self.max_items} memories "
                f"(spec.memory.maxItems): forget some, or let them expire"
            )
        if stored == -2:
            active = await self.active_model()
            raise ValueError(f"{model} is not the fleet's memory model ({active})")
        return stored

    async def recall(
        self,
        query: Vectors,
        model: str,
        k: int,
        reader: str,
        where: Mapping[str, Scalar] | None = None,
    ) -> list[Recalled]:
        """The ``k`` nearest memories ``reader`` may see whose metadata matches ``where``."""
        held = cast(dict[str, str], await self.client.hgetall(self.keys.memory_quarantine))
        now_ms = await self.now_ms()
        # One at a time: faiss may not search a graph that a worker thread is adding to.
        async with self._lock:
            graph = await self._sync()
            if graph is None or graph.index is None or k < 1:
                return []
            if graph.model != model:
                raise ValueError(f"{model} is not the fleet's memory model ({graph.model})")
            rule = _Filter(held, reader, now_ms, where or {})
            return rule.search(graph, graph.index, np.asarray([query], np.float32), k)

    async def forget(self, ids: Sequence[str]) -> int:
        """Delete these memories; how many existed."""
        return int(await self._scripts["FORGET"](keys=self._written, args=list(ids)))

    async def promote(self, revision: str) -> int:
        """Lift ``revision``'s quarantine (its rollout completed); how many memories."""
        return int(await self._scripts["SETTLE"](keys=self._written, args=[revision, 0]))

    async def discard(self, revision: str) -> int:
        """Delete ``revision``'s quarantined memories (rolled back); how many."""
        return int(await self._scripts["SETTLE"](keys=self._written, args=[revision, 1]))

    async def settle(self, trusted: str, pending: str | None) -> tuple[int, int]:
        """Lift ``trusted``'s quarantine, delete every other revision's but ``pending``'s."""
        return await quarantine.settle_to(self.client, self.keys, trusted, pending)

    async def sweep(self) -> int:
        """Delete expired memories; how many."""
        now_ms, expired = await self.now_ms(), []
        async for record in self._scan():
            if record.expires_ms is not None and record.expires_ms <= now_ms:
                expired.append(record.id)
        return await self.forget(expired) if expired else 0

    async def size(self) -> int:
        """How many memories the fleet holds (quarantined ones included)."""
        return int(await self.client.hlen(self.keys.memory))

    async def records(self) -> AsyncIterator[MemoryRecord]:
        """Every unexpired, unquarantined record (export)."""
        now_ms = await self.now_ms()
        held = cast(dict[str, str], await self.client.hgetall(self.keys.memory_quarantine))
        async for record in self._scan():
            if record.id not in held and visible(record, {}, "", now_ms):
                yield record

    async def missing(self, model: str, limit: int) -> list[MemoryRecord]:
        """Up to ``limit`` records without a ``model`` vector yet (re-embedding).

        Another model's unfinished vectors are dropped first: the fleet asks for ``model`` now.
        """
        target = cast(str | None, await self.client.get(self.keys.memory_next_model))
        if target != model:  # none yet, or spec.memory.model has moved on: start over
            async with self.client.pipeline(transaction=True) as claim:
                claim.delete(self.keys.memory_next_vectors)
                claim.set(self.keys.memory_next_model, model)
                await claim.execute()
        done = set(cast(list[str], await self.client.hkeys(self.keys.memory_next_vectors)))
        ids = [
            i for i in cast(list[str], await self.client.hkeys(self.keys.memory)) if i not in done
        ]
        if not ids:
            return []
        raw = await self.client.hmget(self.keys.memory, ids[:limit])
        found = []
        for value in cast(list[str | None], raw):
            with contextlib.suppress(ValidationError):
                if value is not None:
                    found.append(MemoryRecord.model_validate_json(value))
        return found

    async def put_vectors(self, model: str, ids: Sequence[str], vectors: Vectors) -> int:
        """Store ``model`` vectors for records that still exist; how many."""
        args: list[str] = [model]
        for memory_id, vector in zip(ids, vectors, strict=True):
            args += [memory_id, encode_vector(vector)]
        k = self.keys
        keys = [k.memory, k.memory_next_vectors, k.memory_next_model]
        stored = int(await self._scripts["PUT_VECTORS"](keys=keys, args=args))
        if stored < 0:
            raise ValueError(f"another model's re-embedding is under way, not {model}'s")
        return stored

    async def cutover(self, model: str) -> bool:
        """Make ``model`` active once every record has its vector; False while one lacks it."""
        k = self.keys
        keys = [
            k.memory,
            k.memory_vectors,
            k.memory_next_vectors,
            k.memory_model,
            k.memory_next_model,
            k.memory_log,
        ]
        return bool(await self._scripts["CUTOVER"](keys=keys, args=[model]))

    async def now_ms(self) -> int:
        """Redis' clock (ms since the epoch): expiry is judged by it, not by agents'."""
        seconds, micros = await self.client.time()
        return int(seconds) * 1000 + int(micros) // 1000

    async def _scan(self) -> AsyncIterator[MemoryRecord]:
        async for _, raw in self.client.hscan_iter(self.keys.memory, count=_PAGE):
            try:
                yield MemoryRecord.model_validate_json(raw)
            except ValidationError:
                continue

    async def _sync(self) -> _Graph | None:
        """The graph of the active model, brought up to the log's end (under `_lock`)."""
        model = await self.active_model()
        graph = self._graph
        if model is None:
            self._graph = None
        elif graph is None or graph.model != model or graph.stale:
            self._graph = await self._load(model)
        else:
            await self._follow(graph)
        return self._graph

    async def _load(self, model: str) -> _Graph:
        newest = cast(_Entries, await self.client.xrevrange(self.keys.memory_log, count=1))
        graph = _Graph(model, newest[0][0] if newest else "0-0")
        batch: list[tuple[str, str]] = []
        async for pair in self.client.hscan_iter(self.keys.memory_vectors, count=_PAGE):
            batch.append(cast(tuple[str, str], pair))
            if len(batch) >= _PAGE:
                await asyncio.to_thread(graph.add, await self._records(batch))
                batch = []
        await asyncio.to_thread(graph.add, await self._records(batch))
        return graph

    async def _records(self, pairs: list[tuple[str, str]]) -> list[tuple[MemoryRecord, Vectors]]:
        if not pairs:
            return []
        raw = await self.client.hmget(self.keys.memory, [memory_id for memory_id, _ in pairs])
        found = []
        for (_, vector), value in zip(pairs, cast(list[Any], raw), strict=True):
            if value is None:
                continue
            try:
                found.append((MemoryRecord.model_validate_json(value), decode_vector(vector)))
            except ValidationError:
                continue
        return found

    async def _follow(self, graph: _Graph) -> None:
        """Apply the log's entries since the graph's last one; reload if they were trimmed."""
        first = cast(_Entries, await self.client.xrange(self.keys.memory_log, count=1))
        if first and _newer(first[0][0], graph.last) and graph.last != "0-0":
            self._graph = await self._load(graph.model)
            return
        while entries := cast(
            _Entries,
            await self.client.xrange(self.keys.memory_log, min=f"({graph.last}", count=_PAGE),
        ):
            added = []
            for entry_id, fields in entries:
                graph.last = entry_id
                if fields.get("op") == LogOp.RESET:
                    self._graph = await self._load(graph.model)
                    return
                if fields.get("op") == LogOp.DELETE:
                    graph.delete(fields.get("id", ""))
                elif fields.get("op") == LogOp.ADD:
                    added.append(fields.get("id", ""))
            vectors = await self.client.hmget(self.keys.memory_vectors, added) if added else []
            pairs = [(i, cast(str, v)) for i, v in zip(added, vectors, strict=True) if v]
            await asyncio.to_thread(graph.add, await self._records(pairs))


def _newer(entry: str, than: str) -> bool:
    """Whether stream id ``entry`` comes after ``than``."""
    a, b = (tuple(int(p) for p in i.split("-")) for i in (entry, than))
    return a > b
