"""An agent's side of protocol majors: note what traffic uses, and who can take what it cannot.

Each task's major is noted in memory and stamped into the fleet's protocol set with the heartbeat
(one round trip per heartbeat, not per task), so the operator's protocol gate sees majors that only
foreign producers submit. A task of a major this agent does not speak goes to another agent when
one speaks it (newfuse.wire.protocol says how); whether one does is read from the agents' own
states, at most every SPEAKERS_CACHE_SECONDS.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Callable

import redis.asyncio as aioredis
from pydantic import ValidationError

from newfuse.wire.keys import FleetKeys
from newfuse.wire.protocol import LEGACY_SPEAKS, NOTE_LUA, SPEAKERS_CACHE_SECONDS
from newfuse.wire.state import AgentStatus, StateUpdate

# An agent state older than this is a dead agent's: it takes nothing.
LIVE_STATE_SECONDS = 60.0


class Protocols:
    """The majors this agent has seen since its last heartbeat, and the fleet's speakers."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: FleetKeys,
        agent_id: str,
        clock: Callable[[], dt.datetime],
    ) -> None:
        """Stamp and read ``keys``' fleet through ``client``; ``agent_id`` is this agent."""
        self.client, self.keys, self.agent_id, self.clock = client, keys, agent_id, clock
        self._note = client.register_script(NOTE_LUA)
        self.seen: set[int] = set()
        self._spoken: frozenset[int] = frozenset()
        self._read_at = float("-inf")

    def note(self, major: int) -> None:
        """A task of ``major`` arrived."""
        self.seen.add(major)

    async def flush(self) -> None:
        """Stamp the majors seen since the last flush (kept for the next one if Redis fails)."""
        if not self.seen:
            return
        majors = sorted(self.seen)
        await self._note(keys=[self.keys.protocol], args=majors)
        self.seen.difference_update(majors)

    async def spoken_by_others(self) -> frozenset[int]:
        """Every major some other live, active agent of the fleet speaks."""
        if time.monotonic() - self._read_at < SPEAKERS_CACHE_SECONDS:
            return self._spoken
        raw = await self.client.hgetall(self.keys.agents)
        now, spoken = self.clock(), set[int]()
        for agent, value in raw.items():
            name = agent.decode() if isinstance(agent, bytes) else str(agent)
            if name == self.agent_id:
                continue
            try:
                update = StateUpdate.model_validate_json(value)
            except ValidationError:
                continue
            age = (now - update.timestamp).total_seconds()
            if update.state.status is AgentStatus.ACTIVE and age <= LIVE_STATE_SECONDS:
                spoken |= set(update.state.speaks) or LEGACY_SPEAKS
        self._spoken, self._read_at = frozenset(spoken), time.monotonic()
        return self._spoken
