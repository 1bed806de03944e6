"""Reading a fleet's A2A event stream (`FleetKeys.a2a_events`): what came after an id, what comes.

Anybody who can reach the fleet's Redis can add entries, so each is checked on its own and one
that is not a task event is skipped; an event only says which task moved to which state, and what
a task produced is read from its verified result, never from here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis

from newfuse.adapters.streamread import RAW, RawEntry, range_entries, read_entries, text
from newfuse.wire.keys import FleetKeys
from newfuse.wire.tasks import TaskEvent

# At most this many entries per read: a subscriber far behind catches up in pages.
PAGE: Final = 500


@dataclass(frozen=True)
class Event:
    """One entry of the event stream."""

    entry_id: str
    task_id: str
    state: TaskEvent


def entry_key(entry_id: str) -> tuple[int, int]:
    """A stream id as a sortable pair; ValueError if it is not `<ms>-<seq>`."""
    ms, _, seq = entry_id.partition("-")
    return int(ms), int(seq or "0")


_STATES: Final = {state.value.encode(): state for state in TaskEvent}


def _events(entries: list[RawEntry]) -> list[Event]:
    found = []
    for entry_id, fields in entries:
        task_id, state = fields.get(b"task_id"), _STATES.get(fields.get(b"state") or b"")
        if task_id and state is not None:
            found.append(Event(text(entry_id), text(task_id), state))
    return found


def _last(entries: list[RawEntry], default: str) -> str:
    return text(entries[-1][0]) if entries else default


class EventLog:
    """One fleet's event stream, read raw: one entry that is not UTF-8 must not stop the reads."""

    def __init__(self, client: aioredis.Redis, keys: FleetKeys) -> None:
        """Read ``keys``' event stream through ``client``."""
        self.client, self.key = client, keys.a2a_events

    async def _raw(self, *command: Any) -> Any:
        return await self.client.execute_command(*command, **RAW)  # type: ignore[no-untyped-call]

    async def newest(self) -> str:
        """The id of the newest entry ("0-0" for an empty stream)."""
        entries = range_entries(await self._raw("XREVRANGE", self.key, "+", "-", "COUNT", 1))
        return _last(entries, "0-0")

    async def after(self, entry_id: str) -> tuple[list[Event], str, bool]:
        """A page of events after ``entry_id``; the id to read on from; whether more may follow."""
        reply = await self._raw("XRANGE", self.key, f"({entry_id}", "+", "COUNT", PAGE)
        entries = range_entries(reply)
        return _events(entries), _last(entries, entry_id), len(entries) == PAGE

    async def wait(self, entry_id: str, block_ms: int) -> tuple[list[Event], str]:
        """Events after ``entry_id``, waiting up to ``block_ms`` for one; and the id read up to."""
        reply = await self._raw(
            "XREAD", "COUNT", PAGE, "BLOCK", block_ms, "STREAMS", self.key, entry_id
        )
        entries = read_entries(reply)
        return _events(entries), _last(entries, entry_id)
