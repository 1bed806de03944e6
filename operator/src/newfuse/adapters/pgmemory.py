"""Fleet memory in PostgreSQL with pgvector: for fleets whose memory outgrows what Redis holds well.

Redis keeps every vector in RAM and recalls by scanning what a reader may see; PostgreSQL keeps
them on disk under an HNSW index and filters by metadata in the same query. The semantics are
the Redis default's (newfuse.wire.memory), so either backend can serve a fleet; as the operator
has no connection here, the fleet's agents settle its quarantine (`settle`, in their upkeep).

Fleets are kept apart by credentials, as in Redis: each fleet has its own schema, owned by its
own LOGIN role that has no rights anywhere else, so a fleet's connection cannot read another
fleet's tables even when it names them. The schema's name is a hash of namespace/fleet, because
Kubernetes names may be longer than PostgreSQL's 63-byte identifiers and may hold '-' and '.'.

Vectors sit in two slot tables, one per embedding model: the active one answers recalls while
re-embedding fills the other, and cutover flips which slot is active and empties the old one in
one transaction, so no recall ever mixes two models' vectors.
"""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Mapping, Sequence
from typing import Any, Final

import numpy as np
from pgvector.psycopg import register_vector_async
from psycopg import AsyncConnection, sql
from psycopg.types.json import Jsonb

from newfuse.adapters.memoryport import MemoryFullError, Recalled, Vectors
from newfuse.wire.memory import DEFAULT_MAX_ITEMS, MemoryRecord, Scalar

Conn = AsyncConnection[tuple[Any, ...]]
# The HNSW parameters newfuse.adapters.vectorindex measured (faiss): the same graph, here.
HNSW_M: Final = 16
EF_CONSTRUCTION: Final = 200
EF_SEARCH: Final = 64
PAGE: Final = 1000
SLOTS: Final = ("a", "b")
# The database's clock, not the caller's: every agent of a fleet then agrees on what has expired.
NOW_MS: Final = sql.SQL("(extract(epoch from clock_timestamp()) * 1000)::bigint")
COLUMNS: Final = sql.SQL("r.id, r.text, r.metadata, r.revision, r.created_ms, r.expires_ms")

# `state` has one row: the active model and its slot, and the model re-embedding fills the other.
# Deleting a record deletes its quarantine and its vectors with it (ON DELETE CASCADE).
TABLES: Final = """
CREATE TABLE IF NOT EXISTS {s} (one boolean PRIMARY KEY DEFAULT true CHECK (one), active text,
  slot text NOT NULL DEFAULT 'a', next text);
INSERT INTO {s} DEFAULT VALUES ON CONFLICT DO NOTHING;
CREATE TABLE IF NOT EXISTS {r} (id text PRIMARY KEY, text text NOT NULL, metadata jsonb NOT NULL,
  revision text NOT NULL, created_ms bigint NOT NULL, expires_ms bigint);
CREATE INDEX IF NOT EXISTS expiry ON {r} (expires_ms);
CREATE INDEX IF NOT EXISTS meta ON {r} USING gin (metadata jsonb_path_ops);
CREATE TABLE IF NOT EXISTS {q} (id text PRIMARY KEY REFERENCES {r} ON DELETE CASCADE,
  revision text NOT NULL);
CREATE INDEX IF NOT EXISTS held ON {q} (revision);
"""
SLOT_TABLE: Final = """
CREATE TABLE IF NOT EXISTS {v} (id text PRIMARY KEY REFERENCES {r} ON DELETE CASCADE,
  embedding vector({dim}) NOT NULL);
CREATE INDEX IF NOT EXISTS {index} ON {v} USING hnsw (embedding vector_ip_ops)
  WITH (m = {m}, ef_construction = {ef});
"""


# Before PostgreSQL 15 anyone may create in `public`, beyond a fleet's schema's walls. `public`
# stays on the search path for the extension's type and operators; a fleet's schema is closed to
# PUBLIC, which new schemas are not opened to anyway: that REVOKE states intent as much as it acts.
PROVISION: Final = """
CREATE EXTENSION IF NOT EXISTS vector;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
{verb} ROLE {role} LOGIN PASSWORD {password} NOSUPERUSER NOCREATEDB NOCREATEROLE NOINHERIT
  NOREPLICATION NOBYPASSRLS;
CREATE SCHEMA IF NOT EXISTS {role} AUTHORIZATION {role};
REVOKE ALL ON SCHEMA {role} FROM PUBLIC;
GRANT CONNECT ON DATABASE {database} TO {role};
ALTER ROLE {role} SET search_path = {role}, public;
"""


def fleet_name(namespace: str, fleet: str) -> str:
    """The fleet's schema and role name: stable, short, and a valid identifier whatever its name."""
    return "nf_" + hashlib.sha256(f"{namespace}/{fleet}".encode()).hexdigest()[:24]


async def provision(admin: Conn, namespace: str, fleet: str, password: str) -> str:
    """Create the fleet's schema, and its LOGIN role with rights there only; the role's name.

    ``admin`` must be able to create roles and the `vector` extension. Running it again resets
    the role's password, which is how a leaked credential is rotated.
    """
    name = fleet_name(namespace, fleet)
    async with admin.transaction():
        cur = await admin.execute(
            "SELECT current_database(), EXISTS (SELECT 1 FROM pg_roles WHERE rolname = %s)", [name]
        )
        [(database, exists)] = await cur.fetchall()  # SELECT without FROM: one row
        # CREATE ROLE takes no bind parameters, hence a quoted literal for the password.
        await admin.execute(
            sql.SQL(PROVISION).format(
                verb=sql.SQL("ALTER" if exists else "CREATE"),
                role=sql.Identifier(name),
                password=sql.Literal(password),
                database=sql.Identifier(database),
            )
        )
    return name


class PgVectorMemory:
    """One fleet's memories in its own PostgreSQL schema (newfuse.adapters.memoryport)."""

    def __init__(
        self, conn: Conn, namespace: str, fleet: str, dim: int, max_items: int = DEFAULT_MAX_ITEMS
    ) -> None:
        """Keep the fleet's memories through ``conn`` (connected as the fleet's own role).

        The connection must be in autocommit mode: every operation opens its own transaction.
        Call `setup` once before use, or build the store with `connect`.
        """
        self.conn, self.dim, self.max_items = conn, dim, max_items
        self.schema = fleet_name(namespace, fleet)
        self.label = f"{namespace}/{fleet}"
        # One connection runs one transaction at a time; concurrent callers take turns.
        self._lock = asyncio.Lock()

    @classmethod
    async def connect(
        cls, dsn: str, namespace: str, fleet: str, dim: int, max_items: int = DEFAULT_MAX_ITEMS
    ) -> PgVectorMemory:
        """A ready store on a new connection to ``dsn`` (the fleet role's)."""
        conn = await AsyncConnection.connect(dsn, autocommit=True)
        store = cls(conn, namespace, fleet, dim, max_items)
        await store.setup()
        return store

    def _q(self, text: str, slot: str | None = None, **more: sql.Composable) -> sql.Composed:
        # {r} records, {q} quarantine, {s} state, {v} the vectors of `slot`; {cols} a record's
        # columns, {now} the database's clock in ms: names are never pasted in as text.
        table = {"r": "records", "q": "quarantine", "s": "state", "v": f"vectors_{slot}"}
        return sql.SQL(text).format(
            cols=COLUMNS,
            now=NOW_MS,
            dim=self.dim,
            m=HNSW_M,
            ef=EF_CONSTRUCTION,
            index=sql.Identifier(f"hnsw_{slot}"),
            **{k: sql.Identifier(self.schema, v) for k, v in table.items()},
            **more,
        )

    async def setup(self) -> None:
        """Register the vector type and create the fleet's tables if missing (idempotent)."""
        await register_vector_async(self.conn)
        async with self._lock, self.conn.transaction():
            # Agents of a fleet start together; the lock keeps two from racing on CREATE TABLE.
            await self.conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", [self.schema])
            await self.conn.execute(self._q(TABLES))
            for slot in SLOTS:
                await self.conn.execute(self._q(SLOT_TABLE, slot))
            [(dim,)] = await self._fetch(self._q(_DIM), [f"{self.schema}.vectors_a", "embedding"])
        if dim != self.dim:
            raise ValueError(f"fleet {self.label} stores vectors of another size than {self.dim}")

    async def _state(self, lock: str) -> tuple[str | None, str, str | None]:
        # Row locks on the one state row order the operations: writers take NO KEY UPDATE (one
        # at a time), recalls KEY SHARE (never blocked by writers), cutover UPDATE (waits for
        # both), so no recall reads a slot that a cutover is emptying.
        assert lock in ("KEY SHARE", "NO KEY UPDATE", "UPDATE")
        query = self._q("SELECT active, slot, next FROM {s} FOR {lock}", lock=sql.SQL(lock))
        [row] = await self._fetch(query)  # setup() inserts the one state row
        return row[0], row[1], row[2]

    def _vectors(self, vectors: Vectors, rows: int) -> Vectors:
        array = np.asarray(vectors, dtype=np.float32)
        if array.size != rows * self.dim:
            raise ValueError(f"{array.shape} is not {rows} vectors of {self.dim} dimensions")
        return array.reshape(rows, self.dim)

    async def _fetch(self, statement: sql.Composed, args: Any = None) -> list[tuple[Any, ...]]:
        return await (await self.conn.execute(statement, args)).fetchall()

    async def now_ms(self) -> int:
        """The database's clock (ms since the epoch): expiry is judged by it, not by agents'."""
        async with self._lock:
            return int((await self._fetch(sql.SQL("SELECT ") + NOW_MS))[0][0])

    async def active_model(self) -> str | None:
        """The embedding model recalls use (None until the first memory is stored)."""
        async with self._lock, self.conn.transaction():
            return (await self._state("KEY SHARE"))[0]

    async def remember(
        self,
        records: Sequence[MemoryRecord],
        vectors: Vectors,
        model: str,
        quarantine: str | None = None,
    ) -> int:
        """Store ``records`` with their ``model`` vectors; how many were new."""
        array = self._vectors(vectors, len(records))
        async with self._lock, self.conn.transaction():
            active, slot, _ = await self._state("NO KEY UPDATE")
            if active is None:
                await self.conn.execute(self._q("UPDATE {s} SET active = %s"), [model])
            elif active != model:
                raise ValueError(f"fleet {self.label} embeds with {active}, not {model}")
            ids = [r.id for r in records]
            seen = {row[0] for row in await self._fetch(self._q(_IN_RECORDS), [ids])}
            # Record id -> its index; reversed, so that the first of a repeated id wins.
            fresh = {r.id: i for i, r in reversed(list(enumerate(records))) if r.id not in seen}
            held = (await self._fetch(self._q("SELECT count(*) FROM {r}")))[0][0]
            # Raising inside the transaction rolls it back: nothing is stored, not even the model.
            if held + len(fresh) > self.max_items:
                raise MemoryFullError(
                    f"fleet {self.label} would hold more than {self.max_items} memories, its "
                    "limit: forget some, or let them expire"
                )
            async with self.conn.cursor() as cur:
                await cur.executemany(
                    self._q("INSERT INTO {r} VALUES (%s, %s, %s, %s, %s, %s)"),
                    [_row(records[i]) for i in fresh.values()],
                )
                await cur.executemany(
                    self._q("INSERT INTO {v} VALUES (%s, %s)", slot),
                    [(id_, array[i]) for id_, i in fresh.items()],
                )
                if quarantine is not None:
                    await cur.executemany(
                        self._q("INSERT INTO {q} VALUES (%s, %s)"),
                        [(id_, quarantine) for id_ in fresh],
                    )
            return len(fresh)

    async def recall(
        self,
        query: Vectors,
        model: str,
        k: int,
        reader: str,
        where: Mapping[str, Scalar] | None = None,
    ) -> list[Recalled]:
        """The ``k`` nearest memories that ``reader`` may see and ``where`` admits, best first."""
        vector = self._vectors(query, 1)[0]
        async with self._lock, self.conn.transaction():
            active, slot, _ = await self._state("KEY SHARE")
            if active is None:
                return []  # nothing stored yet: not an error for an agent asking early
            if active != model:
                raise ValueError(f"fleet {self.label} recalls with {active}, not {model}")
            # Iterative scans keep walking the graph while filters reject candidates, so a
            # quarantine or a `where` that hides most neighbours still yields k results.
            await self.conn.execute("SET LOCAL hnsw.iterative_scan = strict_order")
            await self.conn.execute(
                sql.SQL("SET LOCAL hnsw.ef_search = {}").format(max(EF_SEARCH, k))
            )
            if not where:
                # The planner underrates how many rows pass the filters, and so would sort every
                # vector exactly rather than walk the graph. With a `where` its choice stands: a
                # narrow one is best served by the GIN index and an exact sort of what it finds.
                await self.conn.execute("SET LOCAL enable_sort = off")
            narrow = sql.SQL("AND r.metadata @> %(where)s" if where else "")
            rows = await self._fetch(
                self._q(_RECALL, slot, where=narrow),
                {"q": vector, "reader": reader, "where": Jsonb(dict(where or {})), "k": k},
            )
            return [Recalled(_record(row), float(row[6])) for row in rows]

    async def _count(self, text: str, *args: Any) -> int:
        # The state lock keeps deletes from racing put_vectors' inserts (which would then break
        # the foreign key) and remember's count against the limit.
        async with self._lock, self.conn.transaction():
            await self._state("NO KEY UPDATE")
            return (await self.conn.execute(self._q(text), args)).rowcount

    async def forget(self, ids: Sequence[str]) -> int:
        """Delete these memories; how many existed."""
        return await self._count("DELETE FROM {r} WHERE id = ANY(%s)", list(ids))

    async def promote(self, revision: str) -> int:
        """Lift ``revision``'s quarantine (its rollout completed); how many memories."""
        return await self._count("DELETE FROM {q} WHERE revision = %s", revision)

    async def discard(self, revision: str) -> int:
        """Delete ``revision``'s quarantined memories (rolled back); how many."""
        return await self._count(
            "DELETE FROM {r} WHERE id IN (SELECT id FROM {q} WHERE revision = %s)", revision
        )

    async def settle(self, trusted: str, pending: str | None) -> tuple[int, int]:
        """Lift ``trusted``'s quarantine, delete every other revision's but ``pending``'s."""
        async with self._lock, self.conn.transaction():
            await self._state("NO KEY UPDATE")
            rows = await self._fetch(self._q(_SETTLE), {"trusted": trusted, "pending": pending})
        return int(rows[0][0]), int(rows[0][1])

    async def sweep(self) -> int:
        """Delete expired memories; how many."""
        return await self._count("DELETE FROM {r} WHERE expires_ms <= {now}")

    async def size(self) -> int:
        """How many memories the fleet holds (quarantined ones included)."""
        async with self._lock:
            return int((await self._fetch(self._q("SELECT count(*) FROM {r}")))[0][0])

    async def records(self) -> AsyncIterator[MemoryRecord]:
        """Every unexpired, unquarantined record (export), a page at a time by id."""
        after = ""
        while True:
            # Pages by id rather than one cursor: no transaction stays open while a slow
            # consumer works, and writers go on between pages.
            async with self._lock:
                rows = await self._fetch(self._q(_EXPORT), [after, PAGE])
            for row in rows:
                yield _record(row)
            if len(rows) < PAGE:
                return
            after = rows[-1][0]

    async def _target(self, model: str, *, claim: bool) -> str:
        """The slot of ``model``'s vectors; ``claim`` takes the spare slot from another model."""
        active, slot, target = await self._state("NO KEY UPDATE")
        if model == active:
            return slot
        if target not in (None, model) and not claim:
            raise ValueError(f"fleet {self.label} is re-embedding with {target}, not {model}")
        if target != model:  # none yet, or one spec.memory.model has since moved on from
            await self.conn.execute(self._q("TRUNCATE {v}", SLOTS[1 - SLOTS.index(slot)]))
            await self.conn.execute(self._q("UPDATE {s} SET next = %s"), [model])
        return SLOTS[1 - SLOTS.index(slot)]

    async def missing(self, model: str, limit: int) -> list[MemoryRecord]:
        """Up to ``limit`` records that have no ``model`` vector yet (re-embedding)."""
        async with self._lock, self.conn.transaction():
            slot = await self._target(model, claim=True)
            return [_record(row) for row in await self._fetch(self._q(_MISSING, slot), [limit])]

    async def put_vectors(self, model: str, ids: Sequence[str], vectors: Vectors) -> int:
        """Store ``model`` vectors for records that still exist; how many."""
        array = self._vectors(vectors, len(ids))
        async with self._lock, self.conn.transaction():
            slot = await self._target(model, claim=False)
            # An INSERT ... SELECT that finds no record (forgotten since `missing` listed it)
            # stores nothing, where a plain INSERT would break the foreign key, and the batch.
            async with self.conn.cursor() as cur:
                await cur.executemany(self._q(_PUT, slot), list(zip(array, ids, strict=True)))
                return cur.rowcount  # executemany adds up its statements' counts

    async def cutover(self, model: str) -> bool:
        """Make ``model`` active if every record has its vector; True if it is now active."""
        async with self._lock, self.conn.transaction():
            active, slot, target = await self._state("UPDATE")
            if model == active:
                return True  # already done: a retried cutover is not a failed one
            spare = SLOTS[1 - SLOTS.index(slot)]
            if target != model or await self._fetch(self._q(_MISSING, spare), [1]):
                return False
            # TRUNCATE is transactional in PostgreSQL: the old vectors go only if this commits.
            await self.conn.execute(self._q("TRUNCATE {v}", slot))
            await self.conn.execute(
                self._q("UPDATE {s} SET active = %s, slot = %s, next = NULL"), [model, spare]
            )
            return True


_IN_RECORDS: Final = "SELECT id FROM {r} WHERE id = ANY(%s)"
_DIM: Final = "SELECT atttypmod FROM pg_attribute WHERE attrelid = %s::regclass AND attname = %s"
_SETTLE: Final = (
    "WITH lifted AS (DELETE FROM {q} WHERE revision = %(trusted)s RETURNING 1), gone AS (DELETE "
    "FROM {r} WHERE id IN (SELECT id FROM {q} WHERE revision <> %(trusted)s AND revision IS DIST"
    "INCT FROM %(pending)s) RETURNING 1) SELECT (SELECT count(*) FROM lifted), count(*) FROM gone"
)
# Visibility as an anti-join: the planner then expects most rows to pass, as they do.
_RECALL: Final = (
    "SELECT {cols}, -(v.embedding <#> %(q)s) FROM {v} v JOIN {r} r ON r.id = v.id "
    "WHERE (r.expires_ms IS NULL OR r.expires_ms > {now}) AND NOT EXISTS (SELECT 1 FROM {q} h "
    "WHERE h.id = v.id AND h.revision <> %(reader)s) {where} "
    "ORDER BY v.embedding <#> %(q)s LIMIT %(k)s"
)
_EXPORT: Final = (
    "SELECT {cols} FROM {r} r WHERE r.id > %s AND (r.expires_ms IS NULL OR r.expires_ms > {now})"
    " AND NOT EXISTS (SELECT 1 FROM {q} h WHERE h.id = r.id) ORDER BY r.id LIMIT %s"
)
_MISSING: Final = (
    "SELECT {cols} FROM {r} r WHERE NOT EXISTS (SELECT 1 FROM {v} v WHERE v.id = r.id) LIMIT %s"
)
_PUT: Final = (
    "INSERT INTO {v} (id, embedding) SELECT id, %s FROM {r} WHERE id = %s "
    "ON CONFLICT (id) DO UPDATE SET embedding = EXCLUDED.embedding"
)
FIELDS: Final = ("id", "text", "metadata", "revision", "created_ms", "expires_ms")


def _row(record: MemoryRecord) -> tuple[Any, ...]:
    return tuple(Jsonb(record.metadata) if f == "metadata" else getattr(record, f) for f in FIELDS)


def _record(row: tuple[Any, ...]) -> MemoryRecord:
    return MemoryRecord.model_validate(dict(zip(FIELDS, row, strict=False)))
