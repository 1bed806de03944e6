"""The `newfuse` CLI as a user runs it (the installed console script) against the real Redis."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import pytest
import redis

from harness import RedisHandle
from localcluster.netutil import free_port
from newfuse.adapters.redis_store import RedisStore
from newfuse.adapters.taskclient import StreamEntries
from newfuse.wire.keys import FleetKeys
from newfuse.wire.state import AgentState, AgentStatus, StateUpdate
from newfuse.wire.tasks import Priority

NEWFUSE = str(Path(sys.executable).with_name("newfuse"))


def cli(*args: str, redis_url: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NEWFUSE_REDIS_URL": redis_url, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [NEWFUSE, *args], capture_output=True, text=True, timeout=60, env=env, check=False
    )


@pytest.fixture
def fleet(redis_server: RedisHandle, redis_client: redis.Redis) -> Iterator[FleetKeys]:
    """A fleet the operator would have mirrored to Redis (its state key exists)."""
    keys = FleetKeys("cli", f"f{uuid.uuid4().hex[:8]}")
    now = dt.datetime.now(dt.UTC)

    async def mirror() -> None:
        store = RedisStore(redis_server.url)
        state = AgentState(id=keys.fleet, status=AgentStatus.ACTIVE)
        await store.put_fleet_state(
            keys, StateUpdate(agent_id=keys.fleet, state=state, version=1, timestamp=now)
        )
        await store.put_agent_state(
            keys, StateUpdate(agent_id="agent-0", state=state, version=1, timestamp=now)
        )
        await store.close()

    asyncio.run(mirror())
    yield keys
    for key in redis_client.scan_iter(match=keys.pattern):
        redis_client.delete(key)


def test_unknown_fleet_is_a_clear_error(redis_server: RedisHandle) -> None:
    result = cli(
        "task", "submit", "ghost", "-n", "nowhere", "--payload", "{}", redis_url=redis_server.url
    )
    assert result.returncode == 1
    assert "fleet 'ghost' not found in namespace 'nowhere'" in result.stderr


def test_unreachable_redis_is_a_clear_error() -> None:
    result = cli("agents", "any", redis_url=f"redis://127.0.0.1:{free_port()}/0")
    assert result.returncode == 1
    assert "cannot reach Redis" in result.stderr
    assert "Traceback" not in result.stderr


def test_submit_bulk_is_idempotent_by_id_and_lands_on_the_priority_stream(
    redis_server: RedisHandle, redis_client: redis.Redis, fleet: FleetKeys
) -> None:
    base = ("task", "submit", fleet.fleet, "-n", fleet.namespace)
    once = cli(
        *base,
        "--payload",
        '{"q": 1}',
        "--id",
        "job-1",
        "--priority",
        "high",
        redis_url=redis_server.url,
    )
    twice = cli(
        *base,
        "--payload",
        '{"q": 1}',
        "--id",
        "job-1",
        "--priority",
        "high",
        redis_url=redis_server.url,
    )
    assert "task job-1 submitted" in once.stdout, once.stderr
    assert "already submitted" in twice.stdout
    bulk = cli(*base, "--count", "120", redis_url=redis_server.url)
    assert "submitted 120 task(s)" in bulk.stdout, bulk.stderr
    assert redis_client.xlen(fleet.tasks(Priority.HIGH)) == 1
    assert redis_client.xlen(fleet.tasks(Priority.NORMAL)) == 120


def test_agents_and_dlq_views(
    redis_server: RedisHandle, redis_client: redis.Redis, fleet: FleetKeys
) -> None:
    shown = cli("agents", fleet.fleet, "-n", fleet.namespace, redis_url=redis_server.url)
    assert shown.returncode == 0, shown.stderr
    assert "agent-0" in shown.stdout
    assert "active" in shown.stdout
    # A dead letter that holds a valid task can be requeued; garbage cannot.
    task = cli(
        "task",
        "submit",
        fleet.fleet,
        "-n",
        fleet.namespace,
        "--id",
        "dead-1",
        redis_url=redis_server.url,
    )
    assert task.returncode == 0
    [(_, fields)] = cast(StreamEntries, redis_client.xrange(fleet.tasks(Priority.NORMAL)))
    now = dt.datetime.now(dt.UTC).isoformat()
    letter = {
        "reason": "handler_failed",
        "detail": "boom",
        "agent_id": "a",
        "source_stream": "s",
        "at": now,
    }
    good_letter: dict[Any, Any] = {**letter, "raw": fields["envelope"], "task_id": "dead-1"}
    bad_letter: dict[Any, Any] = {**letter, "reason": "malformed_json", "raw": "{nope"}
    good = cast(str, redis_client.xadd(fleet.dead_letters, good_letter))
    bad = cast(str, redis_client.xadd(fleet.dead_letters, bad_letter))
    listing = cli("dlq", fleet.fleet, "-n", fleet.namespace, redis_url=redis_server.url)
    assert "handler_failed" in listing.stdout
    assert "malformed_json" in listing.stdout
    requeued = cli(
        "dlq", fleet.fleet, "-n", fleet.namespace, "--requeue-all", redis_url=redis_server.url
    )
    assert "requeued 1 task(s)" in requeued.stdout
    assert f"skipped {bad}" in requeued.stderr
    assert redis_client.xlen(fleet.tasks(Priority.NORMAL)) == 2, (
        "the dead task is back on its stream"
    )
    assert good not in [e for e, _ in redis_client.xrange(fleet.dead_letters)]
