"""A model change keeps recall working: re-embedding runs in the background while agents recall.

1,500 WordNet definitions are remembered under all-MiniLM-L6-v2, then re-embedded under the other
packaged model while a reader keeps recalling stored definitions by their own text. Every recall
during the change must put the asked memory first: a recall that compared one model's query with
the other model's vectors, or that found nothing, fails the test. A memory written mid-change is
picked up by a later pass, and the new model answers after the cutover.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import pytest
import redis.asyncio as aioredis

from newfuse.adapters.embedder import MINILM, MODELS, embedder_for
from newfuse.adapters.fleetmemory import FleetMemory, Memo
from newfuse.adapters.redismemory import RedisMemory
from newfuse.adapters.reembed import Progress, reembed
from newfuse.wire.keys import FleetKeys
from wordnet import synsets

pytestmark = pytest.mark.integration

DOCS = 1500


def test_recall_answers_throughout_a_model_change_and_after_its_cutover(fleet_url: str) -> None:
    [target] = [m for m in MODELS if m != MINILM.id]
    every = [s.definition for s in synsets() if len(s.definition) > 40]
    corpus = list(dict.fromkeys(every[:: len(every) // DOCS]))[:DOCS]

    async def body() -> None:
        client = aioredis.Redis.from_url(fleet_url, decode_responses=True)
        keys = FleetKeys("mem", f"re{uuid.uuid4().hex[:8]}")
        memory = FleetMemory(RedisMemory(client, keys), "r1")
        try:
            ids = [f"d{i}" for i in range(len(corpus))]
            await memory.remember_many([Memo(t, id=i) for t, i in zip(corpus, ids, strict=True)])
            assert await memory.backend.active_model() == MINILM.id
            seen: list[Progress] = []
            change = asyncio.create_task(reembed(memory, target, seen.append))
            asked, late = random.Random(7), None  # noqa: S311 - picks queries, not secrets
            recalls_during = 0
            while not change.done():
                i = asked.randrange(len(corpus))
                found = await memory.recall(corpus[i], k=3)
                assert found, f"recall of {ids[i]} found nothing"
                assert found[0].record.id == ids[i], f"recall of {ids[i]} went wrong"
                recalls_during += 1
                if late is None and seen:
                    late = await memory.remember("A memory written during the model change.")
            final = await change
            assert final.finished
            assert final.model == target
            assert recalls_during >= 5, f"only {recalls_during} recalls ran during the change"
            assert [p.done for p in seen] == sorted(p.done for p in seen)
            assert final.done == len(corpus) + 1, "the mid-change write was re-embedded too"
            assert await memory.backend.active_model() == target
            assert await client.exists(keys.memory_next_vectors, keys.memory_next_model) == 0
            for i in asked.sample(range(len(corpus)), 20):
                assert (await memory.recall(corpus[i], k=1))[0].record.id == ids[i]
            written = await memory.recall("A memory written during the model change.", k=1)
            assert written[0].record.id == late
            print(f"figures: {recalls_during} recalls answered during re-embedding {final}")
        finally:
            await client.delete(*keys.all_keys())
            await client.aclose()

    asyncio.run(body())


def test_an_unknown_model_is_refused_naming_it() -> None:
    with pytest.raises(ValueError, match="no-such-model@1"):
        embedder_for("no-such-model@1")
