"""Running the `newfuse` CLI as a user does (the installed console script), and a fleet for it.

The CLI refuses a fleet that has no state in Redis, so its tests start from a fleet the operator
would have mirrored: its state key and one agent's registration.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import redis

from harness import RedisHandle
from newfuse.adapters.redis_store import RedisStore
from newfuse.wire.keys import FleetKeys
from newfuse.wire.state import AgentState, AgentStatus, StateUpdate

NEWFUSE = str(Path(sys.executable).with_name("newfuse"))


def cli(
    *args: str, redis_url: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """Run `newfuse *args` against ``redis_url``, wide and without colour."""
    environ = {**os.environ, "NEWFUSE_REDIS_URL": redis_url, "COLUMNS": "200", "NO_COLOR": "1"}
    return subprocess.run(
        [NEWFUSE, *args],
        capture_output=True,
        text=True,
        timeout=60,
        env={**environ, **(env or {})},
        check=False,
    )


def mirrored_fleet(
    redis_server: RedisHandle, redis_client: redis.Redis, namespace: str
) -> Iterator[FleetKeys]:
    """A fleet with its state mirrored (yielded), deleted afterwards."""
    keys = FleetKeys(namespace, f"f{uuid.uuid4().hex[:8]}")
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
