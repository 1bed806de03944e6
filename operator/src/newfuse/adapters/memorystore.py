"""Fleet memory's records in Redis, through the scripts of newfuse.wire.memory.

The store keeps records; search is an index's (newfuse.adapters.vectorindex) over the records a
reader may see (newfuse.core.memory.visible). Connected as the fleet's own Redis user, a store
cannot read another fleet's records whatever names it uses: the ACL refuses the keys.
"""

from __future__ import annotations

from typing import cast

import redis.asyncio as aioredis
from pydantic import ValidationError

from newfuse.core.memory import visible
from newfuse.wire import memory
from newfuse.wire.keys import FleetKeys
from newfuse.wire.memory import MemoryRecord

DEFAULT_MAX_ITEMS = 100_000


class MemoryFullError(RuntimeError):
    """The fleet holds its maximum of memories."""


class MemoryStore:
    """One fleet's memories."""

    def __init__(
        self, client: aioredis.Redis, keys: FleetKeys, max_items: int = DEFAULT_MAX_ITEMS
    ) -> None:
        """Keep ``keys``' fleet's memories through ``client``, at most ``max_items``."""
        self.client, self.keys, self.max_items = client, keys, max_items
        self._remember = client.register_script(memory.REMEMBER_LUA)
        self._settle = client.register_script(memory.SETTLE_LUA)
        self._forget = client.register_script(memory.FORGET_LUA)

    @property
    def _both(self) -> list[str]:
        return [self.keys.memory, self.keys.memory_quarantine]

    async def remember(self, record: MemoryRecord, quarantine: str | None = None) -> bool:
        """Store ``record`` (quarantined for revision ``quarantine``); False if its id exists."""
        args: list[str | int] = [
            record.id,
            record.model_dump_json(),
            quarantine or "",
            self.max_items,
        ]
        stored = int(await self._remember(keys=self._both, args=args))
        if stored < 0:
            raise MemoryFullError(
                f"fleet {self.keys.namespace}/{self.keys.fleet} holds {self.max_items} memories, "
                "its limit: forget some, or let them expire"
            )
        return stored == 1

    async def visible_to(self, reader: str) -> list[MemoryRecord]:
        """Every record an agent of revision ``reader`` may recall now (by Redis' clock)."""
        seconds, micros = await self.client.time()
        now_ms = int(seconds) * 1000 + int(micros) // 1000
        raw = cast(dict[str, str], await self.client.hgetall(self.keys.memory))
        held = cast(dict[str, str], await self.client.hgetall(self.keys.memory_quarantine))
        found = []
        for value in raw.values():
            try:
                record = MemoryRecord.model_validate_json(value)
            except ValidationError:
                continue
            if visible(record, held, reader, now_ms):
                found.append(record)
        return found

    async def promote(self, revision: str) -> int:
        """Lift ``revision``'s quarantine (its rollout completed); how many memories."""
        return int(await self._settle(keys=self._both, args=[revision, 0]))

    async def discard(self, revision: str) -> int:
        """Delete ``revision``'s quarantined memories (rolled back); how many."""
        return int(await self._settle(keys=self._both, args=[revision, 1]))

    async def forget(self, memory_id: str) -> bool:
        """Delete one memory; False if there was none."""
        return bool(await self._forget(keys=self._both, args=[memory_id]))
