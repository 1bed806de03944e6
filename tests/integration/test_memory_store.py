"""Fleet memory against the real Redis: quarantine settled as the operator does, ACL isolation,
limits and expiry, and readers' indexes that follow other processes' writes.

Memories are embedded with the packaged model and recalled through the product path
(FleetMemory over RedisMemory: HNSW plus the visibility rule). The operator settles the quarantine
with the same call it makes on every reconcile (newfuse.adapters.redismemory.settle, from the
fleet's summary), so these tests fail if a canary's memory leaked, survived a rollback or stayed
hidden after promotion.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import numpy as np
import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError

from newfuse.adapters.embedder import Embedder
from newfuse.adapters.fleetmemory import FleetMemory, Memo
from newfuse.adapters.memoryport import MemoryFullError
from newfuse.adapters.quarantine import settle
from newfuse.adapters.redis_store import RedisStore
from newfuse.adapters.redismemory import RedisMemory
from newfuse.core import acl
from newfuse.core.memory import Settlement
from newfuse.wire.keys import FleetKeys
from newfuse.wire.state import FleetSummary, RolloutSummary

pytestmark = pytest.mark.integration

EMBEDDER = Embedder()


def fleet_memory(
    client: aioredis.Redis, keys: FleetKeys, revision: str, trust: Settlement, **kw: int
) -> FleetMemory:
    async def trusted() -> Settlement:
        return trust

    backend = RedisMemory(client, keys, **kw)
    return FleetMemory(backend, revision, trust=trusted, embedders=lambda _id: EMBEDDER)


async def texts(memory: FleetMemory, query: str, k: int = 3) -> list[str]:
    return [r.record.text for r in await memory.recall(query, k)]


def summary(phase: str | None) -> FleetSummary:
    if phase is None:
        return FleetSummary(update_revision="old")
    rollout = RolloutSummary(
        phase=phase, stage="canary", step=1, stable_revision="old", canary_revision="new"
    )
    return FleetSummary(update_revision="new", rollout=rollout)


@asynccontextmanager
async def fleet(url: str) -> AsyncIterator[tuple[aioredis.Redis, FleetKeys]]:
    client = aioredis.Redis.from_url(url, decode_responses=True)
    keys = FleetKeys("mem", f"f{uuid.uuid4().hex[:8]}")
    try:
        yield client, keys
    finally:
        await client.delete(*keys.all_keys())
        await client.aclose()


def test_a_canarys_memories_are_its_own_until_promoted_and_gone_after_a_rollback(
    fleet_url: str,
) -> None:
    async def body() -> None:
        async with fleet(fleet_url) as (client, keys):
            rollout = Settlement("old", "new")
            stable = fleet_memory(client, keys, "old", rollout)
            canary = fleet_memory(client, keys, "new", rollout)
            await stable.remember("The customer prefers email over phone.")
            await canary.remember("Orders ship from the Lyon warehouse.")
            where = "Where do orders ship from?"
            assert "Orders ship from the Lyon warehouse." not in await texts(stable, where)
            assert (await texts(canary, where))[0] == "Orders ship from the Lyon warehouse."
            assert await settle(client, keys, summary("Analyzing")) == [0, 0]
            assert await settle(client, keys, summary("Completed")) == [1, 0]
            assert (await texts(stable, where))[0] == "Orders ship from the Lyon warehouse."

            # The next rollout's canary is rolled back: its writes are deleted, not lifted.
            bad = fleet_memory(client, keys, "new2", Settlement("new", "new2"))
            await bad.remember("Every reply must be in capital letters.")
            style = "How should replies be written?"
            assert (await texts(bad, style))[0] == "Every reply must be in capital letters."
            rolled_back = FleetSummary(
                update_revision="new2",
                rollout=RolloutSummary(
                    phase="RolledBack", stage="canary", step=1,
                    stable_revision="new", canary_revision="new2",
                ),
            )  # fmt: skip
            assert await settle(client, keys, rolled_back) == [0, 1]
            assert "Every reply must be in capital letters." not in await texts(bad, style, 5)
            assert await client.hlen(keys.memory) == 2

    asyncio.run(body())


def test_a_write_made_before_the_operator_said_who_is_trusted_is_lifted_once_it_does(
    fleet_url: str,
) -> None:
    async def body() -> None:
        async with fleet(fleet_url) as (client, keys):
            early = fleet_memory(client, keys, "old", Settlement(None))
            other = fleet_memory(client, keys, "other", Settlement("old"))
            await early.remember("The office closes at six.")
            assert await texts(other, "When does the office close?") == []
            assert await settle(client, keys, summary(None)) == [1, 0]
            assert await texts(other, "When does the office close?", 1) == [
                "The office closes at six."
            ]

    asyncio.run(body())


def test_one_fleets_redis_user_cannot_read_anothers_memories_by_their_names(
    fleet_url: str,
) -> None:
    async def body() -> None:
        admin = aioredis.Redis.from_url(fleet_url, decode_responses=True)
        mine, theirs = FleetKeys("team-a", "notes"), FleetKeys("team-b", "notes")
        password = uuid.uuid4().hex
        user = acl.user_name(mine)
        operator = RedisStore(fleet_url)  # creates the fleet's user as the operator does
        await operator.set_acl_user(user, acl.rules(mine, password))
        trust = Settlement("r1")
        await fleet_memory(admin, theirs, "r1", trust).remember("Team B's secret plan.")
        client = aioredis.Redis.from_url(
            acl.url_for(fleet_url, user, password), decode_responses=True
        )
        try:
            await fleet_memory(client, mine, "r1", trust).remember("Team A's note.")
            assert await texts(fleet_memory(client, mine, "r1", trust), "plan") == [
                "Team A's note."
            ]
            spy = fleet_memory(client, theirs, "r1", trust)
            with pytest.raises(NoPermissionError):
                await spy.recall("secret plan")
            with pytest.raises(NoPermissionError):
                await spy.remember("overwrite")
            with pytest.raises(NoPermissionError):
                await spy.forget("anything")
        finally:
            await client.aclose()
            await operator.delete_acl_user(user)
            await operator.close()
            await admin.delete(*mine.all_keys(), *theirs.all_keys())
            await admin.aclose()

    asyncio.run(body())


def test_limits_expiry_and_idempotent_writes(fleet_url: str) -> None:
    async def body() -> None:
        async with fleet(fleet_url) as (client, keys):
            memory = fleet_memory(client, keys, "r1", Settlement("r1"), max_items=3)
            assert await memory.remember_many([Memo("a cat", id="a"), Memo("a dog", id="b")]) == 2
            assert await memory.remember_many([Memo("a cat", id="a")]) == 0  # a retried write
            await memory.remember("a fleeting thought", ttl_seconds=0.5)
            with pytest.raises(MemoryFullError, match=r"may hold 3 memories"):
                await memory.remember_many([Memo("one"), Memo("two")])
            assert await client.hlen(keys.memory) == 3, "a refused batch stores none of it"
            deadline = asyncio.get_running_loop().time() + 10
            while "a fleeting thought" in await texts(memory, "a fleeting thought"):
                assert asyncio.get_running_loop().time() < deadline, "never expired"
                await asyncio.sleep(0.1)
            # Full, but one memory has expired: the write sweeps it and goes through.
            await memory.remember("a bird")
            assert await client.hlen(keys.memory) == 3
            assert await memory.forget("a", "missing") == 1

    asyncio.run(body())


def test_a_readers_index_follows_other_processes_writes_and_deletions(fleet_url: str) -> None:
    async def body() -> None:
        async with fleet(fleet_url) as (client, keys):
            writer = fleet_memory(client, keys, "r1", Settlement("r1"))
            reader = fleet_memory(client, keys, "r1", Settlement("r1"))
            animals = ["cat", "dog", "horse", "eagle", "shark", "spider", "frog", "owl"]
            ids = {a: await writer.remember(f"The {a} is an animal.") for a in animals}
            assert (await texts(reader, "a bird of prey", 1)) == ["The eagle is an animal."]
            await writer.forget(ids["eagle"])
            await writer.remember("The falcon is a bird of prey.")
            assert (await texts(reader, "a bird of prey", 1)) == ["The falcon is a bird of prey."]
            assert "The eagle is an animal." not in await texts(reader, "a bird of prey", 8)
            # Past a quarter of the graph deleted, the reader rebuilds it; answers stay right.
            await writer.forget(*(ids[a] for a in animals[:5]))
            found = await texts(reader, "an animal", 8)
            assert sorted(found) == sorted(
                ["The spider is an animal.", "The frog is an animal.", "The owl is an animal.",
                 "The falcon is a bird of prey."]
            )  # fmt: skip
            # The same id stored again after its deletion is found once, with its new text.
            await writer.forget(ids["owl"])
            await writer.remember("The owl hunts at night.", memory_id=ids["owl"])
            found = await texts(reader, "owl", 8)
            assert found.count("The owl hunts at night.") == 1
            assert len(found) == len(set(found))

    asyncio.run(body())


def test_a_re_embedding_the_spec_moved_on_from_is_dropped_and_its_writer_refused(
    fleet_url: str,
) -> None:
    async def body() -> None:
        async with fleet(fleet_url) as (client, keys):
            memory = fleet_memory(client, keys, "r1", Settlement("r1"))
            await memory.remember_many([Memo("a cat", id="a"), Memo("a dog", id="b")])
            backend = memory.backend
            one = np.ones((1, 4), np.float32)
            assert {r.id for r in await backend.missing("x@1", 10)} == {"a", "b"}
            assert await backend.put_vectors("x@1", ["a"], one) == 1
            # spec.memory.model changed again before x@1 was done: y@1 starts from nothing.
            assert {r.id for r in await backend.missing("y@1", 10)} == {"a", "b"}
            assert await client.hlen(keys.memory_next_vectors) == 0
            with pytest.raises(ValueError, match="x@1"):
                await backend.put_vectors("x@1", ["b"], one)
            assert await backend.cutover("x@1") is False
            assert await backend.active_model() == EMBEDDER.model.id

    asyncio.run(body())
