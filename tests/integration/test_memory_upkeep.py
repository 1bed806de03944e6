"""The agents' upkeep of fleet memory: a spec.memory.model change re-embeds by one agent at a time
while its handlers keep recalling, and expired memories are swept by one agent per turn.

Two AgentMemory instances stand for two agents of a fleet whose spec now names MiniLM-L3, over a
memory written under all-MiniLM-L6-v2. Both run an upkeep round at once: exactly one re-embeds
(the other finds the lock taken), handlers' recalls through both keep answering during the round,
and afterwards the fleet's memory is under the new model, the lock released and the metric set.
"""

from __future__ import annotations

import asyncio
import uuid

import pytest
import redis.asyncio as aioredis
from prometheus_client import REGISTRY

from newfuse.adapters.embedder import MINILM, MINILM_L3
from newfuse.wire.keys import FleetKeys
from newfuse.wire.memory import MemoryModel
from newfuse.wire.state import FleetSummary
from newfuse_agent.config import AgentConfig
from newfuse_agent.memory import AgentMemory
from wordnet import synsets

pytestmark = pytest.mark.integration

DOCS = 600


def agent(client: aioredis.Redis, keys: FleetKeys, name: str, model: MemoryModel) -> AgentMemory:
    config = AgentConfig(
        agent_id=name, namespace=keys.namespace, fleet=keys.fleet, revision="r1",
        memory_model=model,
    )  # fmt: skip
    return AgentMemory(client, keys, config)


def test_a_model_change_is_re_embedded_by_one_agent_while_both_keep_recalling(
    fleet_url: str,
) -> None:
    every = [s.definition for s in synsets() if len(s.definition) > 40]
    corpus = list(dict.fromkeys(every[:: len(every) // DOCS]))[:DOCS]

    async def body() -> None:
        client = aioredis.Redis.from_url(fleet_url, decode_responses=True)
        keys = FleetKeys("mem", f"up{uuid.uuid4().hex[:8]}")
        summary = FleetSummary(update_revision="r1").to_json()
        await client.hset(keys.fleet_state, keys.FLEET_SUMMARY_FIELD, summary)
        try:
            before = agent(client, keys, "a0", MemoryModel.MINILM)
            ids = [await before.remember(text) for text in corpus[:50]]
            for text in corpus[50:]:
                await before.remember(text)
            assert await before.fleet.backend.active_model() == MINILM.id
            one, two = (agent(client, keys, n, MemoryModel.MINILM_L3) for n in ("a1", "a2"))
            rounds = asyncio.gather(one.upkeep_once(), two.upkeep_once())
            task, answered = asyncio.ensure_future(rounds), 0
            while not task.done():
                for reader in (one, two):
                    i = answered % 50
                    [first, *_] = await reader.recall(corpus[i], k=2)
                    assert first.id == ids[i], "a recall went wrong during the re-embedding"
                    answered += 1
            await task
            assert answered >= 4, f"only {answered} recalls ran during the upkeep round"
            assert await client.get(keys.memory_model) == MINILM_L3.id
            assert not await client.exists(keys.memory_reembed_lock), "the lock was released"
            done = REGISTRY.get_sample_value("newfuse_agent_memory_reembedded")
            assert done == len(corpus), "one agent re-embedded every memory, once"
            assert (await one.recall(corpus[7], k=1))[0].id == ids[7]
            print(f"figures: {answered} recalls answered while {len(corpus)} were re-embedded")
        finally:
            await client.delete(*keys.all_keys())
            await client.aclose()

    asyncio.run(body())


def test_expired_memories_are_swept_by_one_agent_per_turn(fleet_url: str) -> None:
    async def body() -> None:
        client = aioredis.Redis.from_url(fleet_url, decode_responses=True)
        keys = FleetKeys("mem", f"sw{uuid.uuid4().hex[:8]}")
        summary = FleetSummary(update_revision="r1").to_json()
        await client.hset(keys.fleet_state, keys.FLEET_SUMMARY_FIELD, summary)
        try:
            one, two = (agent(client, keys, n, MemoryModel.MINILM) for n in ("a1", "a2"))
            await one.remember("short-lived", ttl_seconds=0.2)
            await one.remember("kept")
            deadline = asyncio.get_running_loop().time() + 10
            while "short-lived" in [m.text for m in await one.recall("short-lived", k=2)]:
                assert asyncio.get_running_loop().time() < deadline, "never expired"
                await asyncio.sleep(0.05)
            await asyncio.gather(one.upkeep_once(), two.upkeep_once())
            assert await client.hlen(keys.memory) == 1
            assert await client.get(keys.memory_sweep_lock) in ("a1", "a2")
            await one.upkeep_once()  # its turn to sweep is taken: it only counts
            assert REGISTRY.get_sample_value("newfuse_agent_memory_items") == 1
        finally:
            await client.delete(*keys.all_keys())
            await client.aclose()

    asyncio.run(body())
