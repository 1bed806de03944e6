"""A fleet whose memory is in PostgreSQL (spec.memory.postgres): its agents settle the quarantine.

The operator settles a Redis-backed fleet's quarantine on every reconcile; it has no connection to
a fleet's PostgreSQL, so the agents do it in their upkeep, from the fleet's summary that the
operator writes into Redis. Here the agents' own AgentMemory runs over a real PostgreSQL with
pgvector (tests/pgserver.py), trust comes from summaries written into Redis the operator's way,
and `newfuse memory provision-pg` is run as a user would. RedisMemory.settle, the same upkeep
step in a Redis-backed fleet, must agree with the operator's settle.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import cast

import numpy as np
import psycopg
import pytest
import redis.asyncio as aioredis

from clitool import cli
from newfuse.adapters import quarantine
from newfuse.adapters.embedder import MINILM
from newfuse.adapters.pgmemory import PgVectorMemory, fleet_name
from newfuse.adapters.redismemory import RedisMemory
from newfuse.core.memory import settlement
from newfuse.wire.keys import FleetKeys
from newfuse.wire.memory import MemoryRecord
from newfuse.wire.state import FleetSummary, RolloutSummary
from newfuse_agent import memory as agent_memory
from newfuse_agent.config import AgentConfig
from newfuse_agent.memory import AgentMemory
from pgserver import grant, pg_server

pytestmark = pytest.mark.integration

NAMESPACE = "mem"
LYON = "Orders ship from the Lyon warehouse."
CAPITALS = "Every reply must be in capital letters."


@pytest.fixture(scope="module")
def postgres() -> Iterator[str]:
    with pg_server() as admin:
        yield admin


@pytest.fixture(autouse=True)
def fresh_trust(monkeypatch: pytest.MonkeyPatch) -> None:
    # Agents cache the fleet's summary for two seconds; these tests change it between calls.
    monkeypatch.setattr(agent_memory, "TRUST_TTL_SECONDS", 0.0)


def rollout(phase: str | None, stable: str = "old", canary: str = "new") -> FleetSummary:
    if phase is None:
        return FleetSummary(update_revision=stable)
    found = RolloutSummary(
        phase=phase, stage="canary", step=1, stable_revision=stable, canary_revision=canary
    )
    return FleetSummary(update_revision=canary, rollout=found)


@dataclass
class PgFleet:
    client: aioredis.Redis
    keys: FleetKeys
    dsn: str

    async def publish(self, summary: FleetSummary) -> None:
        """Write the fleet's summary where the operator does."""
        await self.client.hset(
            self.keys.fleet_state, self.keys.FLEET_SUMMARY_FIELD, summary.to_json()
        )

    async def agent(self, revision: str) -> AgentMemory:
        name = self.keys.fleet
        config = AgentConfig(
            agent_id=f"{name}-{revision}", namespace=NAMESPACE, fleet=name, revision=revision,
            memory_postgres_url=self.dsn,
        )  # fmt: skip
        backend = await PgVectorMemory.connect(self.dsn, NAMESPACE, name, MINILM.dim)
        return AgentMemory(
            self.client, self.keys, config, backend,
            unreachable=(psycopg.OperationalError,), close=backend.conn.close,
        )  # fmt: skip


@asynccontextmanager
async def pg_fleet(redis_url: str, admin: str) -> AsyncIterator[PgFleet]:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    keys = FleetKeys(NAMESPACE, f"f{uuid.uuid4().hex[:8]}")
    try:
        yield PgFleet(client, keys, await grant(admin, NAMESPACE, keys.fleet))
    finally:
        await client.delete(*keys.all_keys())
        await client.aclose()


async def texts(agent: AgentMemory, query: str, k: int = 3) -> list[str]:
    return [r.text for r in await agent.recall(query, k)]


def test_a_canarys_memory_in_postgres_is_settled_by_the_agents_upkeep(
    fleet_url: str, postgres: str
) -> None:
    async def body() -> None:
        async with pg_fleet(fleet_url, postgres) as fleet:
            await fleet.publish(rollout("Analyzing"))
            stable, canary = await fleet.agent("old"), await fleet.agent("new")
            await stable.remember("The customer prefers email over phone.")
            await canary.remember(LYON)
            where = "Where do orders ship from?"
            assert LYON not in await texts(stable, where)
            assert (await texts(canary, where))[0] == LYON
            await stable.upkeep_once()  # mid-rollout: the canary's write waits for a verdict
            assert LYON not in await texts(stable, where)

            await fleet.publish(rollout("Completed"))
            await stable.upkeep_once()
            assert (await texts(stable, where))[0] == LYON
            assert await fleet.client.hlen(fleet.keys.memory) == 0, "nothing went to Redis"

            # The next rollout's canary is rolled back: its write is deleted, not lifted.
            await fleet.publish(rollout("Analyzing", "new", "new2"))
            bad = await fleet.agent("new2")
            await bad.remember(CAPITALS)
            style = "How should replies be written?"
            assert (await texts(bad, style))[0] == CAPITALS
            await fleet.publish(rollout("RolledBack", "new", "new2"))
            await canary.upkeep_once()
            assert CAPITALS not in await texts(bad, style, 5)
            assert await bad.fleet.backend.size() == 2
            for agent in (stable, canary, bad):
                await agent.aclose()

    asyncio.run(body())


def _provision(
    admin: str, fleet: str, *args: str, env: dict[str, str] | None = None
) -> dict[str, object]:
    done = cli(
        "memory", "provision-pg", fleet, "-n", NAMESPACE, "--admin-url", admin, "--json", *args,
        redis_url="redis://127.0.0.1:1/0", env=env,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    found: dict[str, object] = json.loads(done.stdout)
    return found


def test_provision_pg_prints_a_dsn_the_fleets_agents_connect_with(postgres: str) -> None:
    fleet = f"f{uuid.uuid4().hex[:8]}"
    given = _provision(postgres, fleet, "--password-from-env", "FLEET_PG_PASSWORD",
                       env={"FLEET_PG_PASSWORD": "s3cret-but-not-random"})  # fmt: skip
    dsn = str(given["dsn"])
    assert given["role"] == fleet_name(NAMESPACE, fleet)
    assert "s3cret-but-not-random" in dsn
    assert given["secretRef"] == {"name": f"{fleet}-memory-pg", "key": "url"}
    assert str(given["kubectl"]).startswith(
        f"kubectl create secret generic {fleet}-memory-pg -n {NAMESPACE} '--from-literal=url="
    )

    async def use(dsn: str) -> int:
        store = await PgVectorMemory.connect(dsn, NAMESPACE, fleet, MINILM.dim)
        try:
            record = MemoryRecord(id=uuid.uuid4().hex, text="x", revision="r1", created_ms=1)
            vector = np.ones((1, MINILM.dim), np.float32) / np.sqrt(MINILM.dim)
            await store.remember([record], vector, MINILM.id)
            return await store.size()
        finally:
            await store.conn.close()

    assert asyncio.run(use(dsn)) == 1
    # Again, with a generated password: the role's password is rotated, its memories kept.
    rotated = str(_provision(postgres, fleet)["dsn"])
    assert rotated != dsn
    assert asyncio.run(use(rotated)) == 2
    with pytest.raises(psycopg.OperationalError, match="password"):
        asyncio.run(use(dsn))


def test_provision_pg_says_so_when_postgres_cannot_be_reached() -> None:
    done = cli(
        "memory", "provision-pg", "demo", "--admin-url", "postgresql://u@127.0.0.1:1/db",
        redis_url="redis://127.0.0.1:1/0",
    )  # fmt: skip
    assert done.returncode == 1
    assert "cannot reach PostgreSQL" in done.stderr


@pytest.mark.parametrize("phase", [None, "Analyzing", "Completed", "RolledBack"])
def test_redis_memorys_settle_is_the_operators(fleet_url: str, phase: str | None) -> None:
    writes = [("old", None), ("new", "new"), ("new", "new"), ("new2", "new2"), ("x", "x")]

    async def fleet_after(settle: str) -> tuple[tuple[int, int], dict[str, str], set[str]]:
        client = aioredis.Redis.from_url(fleet_url, decode_responses=True)
        keys = FleetKeys(NAMESPACE, f"f{uuid.uuid4().hex[:8]}")
        store = RedisMemory(client, keys)
        try:
            for i, (revision, held) in enumerate(writes):
                record = MemoryRecord(id=f"m{i}", text=f"t{i}", revision=revision, created_ms=1)
                vector = np.eye(1, MINILM.dim, i, np.float32)
                await store.remember([record], vector, MINILM.id, held)
            summary = rollout(phase)
            if settle == "operator":
                lifted, deleted = await quarantine.settle(client, keys, summary)
            else:
                rule = settlement(summary)
                assert rule.trusted is not None
                lifted, deleted = await store.settle(rule.trusted, rule.pending)
            held_now = cast(dict[str, str], await client.hgetall(keys.memory_quarantine))
            return (
                (lifted, deleted),
                held_now,
                set(cast(list[str], await client.hkeys(keys.memory))),
            )
        finally:
            await client.delete(*keys.all_keys())
            await client.aclose()

    operator, agent = asyncio.run(fleet_after("operator")), asyncio.run(fleet_after("agent"))
    assert agent == operator
    assert sum(operator[0]) > 0, "every case settles something"
