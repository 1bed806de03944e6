"""Fleet memory against the real Redis: a canary's quarantine, and fleets kept apart by ACL users.

Memories are embedded with the packaged model and recalled by exact search over what the reader
may see. A canary's memory is recalled by the canary only; promotion shows it to stable agents,
a rollback deletes it. A fleet's own Redis user cannot read another fleet's memories, even when
its client names the other fleet's keys.
"""

from __future__ import annotations

import asyncio
import time
import uuid

import numpy as np
import pytest
import redis.asyncio as aioredis
from redis.exceptions import NoPermissionError

from newfuse.adapters.embedder import Embedder
from newfuse.adapters.memorystore import MemoryFullError, MemoryStore
from newfuse.adapters.redis_store import RedisStore
from newfuse.adapters.vectorindex import ExactIndex
from newfuse.core import acl
from newfuse.wire.keys import FleetKeys
from newfuse.wire.memory import MemoryRecord

EMBEDDER = Embedder()


def memory(text: str, revision: str, **fields: object) -> MemoryRecord:
    vector = EMBEDDER.encode([text])[0]
    return MemoryRecord(
        id=uuid.uuid4().hex,
        text=text,
        model=EMBEDDER.model.id,
        vector=MemoryRecord.encode_vector(vector),
        revision=revision,
        created_ms=int(time.time() * 1000),
        **fields,  # type: ignore[arg-type]
    )


async def recall(store: MemoryStore, reader: str, query: str, k: int = 3) -> list[str]:
    records = await store.visible_to(reader)
    if not records:
        return []
    index = ExactIndex(EMBEDDER.model.dim)
    index.add(np.arange(len(records)), np.stack([r.array() for r in records]))
    found, _ = index.search(EMBEDDER.encode([query]), k)
    return [records[i].text for i in found[0] if i >= 0]


def test_a_canarys_memories_are_its_own_until_promoted_and_gone_after_a_rollback(
    fleet_url: str,
) -> None:
    async def body() -> None:
        client = aioredis.Redis.from_url(fleet_url, decode_responses=True)
        keys = FleetKeys("mem", f"f{uuid.uuid4().hex[:8]}")
        store = MemoryStore(client, keys, max_items=3)
        assert await store.remember(memory("The customer prefers email over phone.", "old"))
        poison = memory("The customer wants every reply in capital letters.", "bad")
        assert await store.remember(poison, quarantine="bad")
        kept = memory("Orders ship from the Lyon warehouse.", "good")
        assert await store.remember(kept, quarantine="good")
        question = "How should replies to the customer be written?"
        assert poison.text not in await recall(store, "old", question)
        assert poison.text in await recall(store, "bad", question)
        assert await store.discard("bad") == 1  # rolled back
        assert poison.text not in await recall(store, "bad", question)
        assert await client.hexists(keys.memory, poison.id) == 0
        assert kept.text not in await recall(store, "old", "Where do orders ship from?")
        assert await store.promote("good") == 1  # completed
        assert (await recall(store, "old", "Where do orders ship from?"))[0] == kept.text
        assert await store.remember(memory("x", "old")), "the discard freed a slot"
        with pytest.raises(MemoryFullError, match=r"holds 3 memories, its limit"):
            await store.remember(memory("one too many", "old"))
        assert await store.forget(kept.id)
        await client.delete(*keys.all_keys())
        await client.aclose()

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
        await MemoryStore(admin, theirs).remember(memory("Team B's secret plan.", "r1"))
        client = aioredis.Redis.from_url(
            acl.url_for(fleet_url, user, password), decode_responses=True
        )
        try:
            assert await MemoryStore(client, mine).remember(memory("Team A's note.", "r1"))
            assert [r.text for r in await MemoryStore(client, mine).visible_to("r1")] == [
                "Team A's note."
            ]
            with pytest.raises(NoPermissionError):
                await MemoryStore(client, theirs).visible_to("r1")
            with pytest.raises(NoPermissionError):
                await MemoryStore(client, theirs).remember(memory("overwrite", "r1"))
        finally:
            await client.aclose()
            await operator.delete_acl_user(user)
            await operator.close()
            await admin.delete(*mine.all_keys(), *theirs.all_keys())
            await admin.aclose()

    asyncio.run(body())
