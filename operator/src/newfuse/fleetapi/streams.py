"""A task's A2A events in stream order, each with an id a client resumes from.

Every event of a task is an entry of the fleet's event stream (`FleetKeys.a2a_events`), so Redis
orders them. An entry may become two A2A events (the output, then the final status), so an event
id is `<entry id>#<part>`. A stream starts with the task as it is (the spec asks for a Task
first), whose id is the position it was read at; then come the events after that position:
first those already in the stream (`after`), then the ones the fleet's hub hands over live.
A client that reconnects with `Last-Event-ID` gets exactly the events after it, none twice.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Final

from a2a.server.events.event_queue import Event as A2AEvent
from a2a.types.a2a_pb2 import (
    Task,
    TaskArtifactUpdateEvent,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)
from a2a.utils.errors import InvalidParamsError

from newfuse.adapters.a2aevents import Event, entry_key
from newfuse.fleetapi.a2amap import TERMINAL, TaskRecord, task_of
from newfuse.fleetapi.fleets import Fleet
from newfuse.fleetapi.hub import Subscription
from newfuse.fleetapi.metrics import STREAMS
from newfuse.wire.tasks import TaskEvent

# The metadata key of every streamed event that holds its id (also sent as the SSE `id:`).
EVENT_ID: Final = "newfuse.eventId"
# How often a live stream with nothing new checks whether its subscription fell behind.
CHECK_SECONDS: Final = 5.0


@dataclass(frozen=True)
class Position:
    """Everything up to part `part` of entry `entry` was delivered (part -1: none of it)."""

    entry: str
    part: int = 1_000_000

    def __str__(self) -> str:
        return f"{self.entry}#{self.part}"

    @classmethod
    def parse(cls, value: str) -> Position:
        """The position an event id names; InvalidParamsError (naming the header) if none."""
        entry, _, part = value.partition("#")
        try:
            entry_key(entry)
            return cls(entry, int(part))
        except ValueError:
            raise InvalidParamsError(
                f"Last-Event-ID: {value!r} is not an id this agent sent"
            ) from None


Marked = Task | TaskStatusUpdateEvent | TaskArtifactUpdateEvent
# Events that change a task's state without ending it. `input-required`: a person must answer or
# approve (human review, `newfuse review list`); the task holds no agent while it waits.
_WAITING: Final = {
    TaskEvent.WORKING: TaskState.TASK_STATE_WORKING,
    TaskEvent.INPUT_REQUIRED: TaskState.TASK_STATE_INPUT_REQUIRED,
}


def _marked(event: Marked, at: str) -> Marked:
    event.metadata.update({EVENT_ID: at})
    return event


async def render(fleet: Fleet, record: TaskRecord, event: Event) -> list[Marked]:
    """The A2A events one entry stands for (none for `submitted`: the first Task says it)."""
    if event.state in _WAITING:
        status = TaskStatus(state=_WAITING[event.state])
        status.timestamp.FromMilliseconds(entry_key(event.entry_id)[0])
        update = TaskStatusUpdateEvent(
            task_id=event.task_id, context_id=record.context_id, status=status
        )
        return [update]
    if event.state is not TaskEvent.ENDED:
        return []
    result = await fleet.tasks.result(event.task_id)
    if result is None:
        return []  # an `ended` entry without a verified result is not believed
    task = task_of(event.task_id, record, result)
    parts: list[Marked] = [
        TaskArtifactUpdateEvent(
            task_id=task.id, context_id=task.context_id, artifact=artifact, last_chunk=True
        )
        for artifact in task.artifacts
    ]
    parts.append(
        TaskStatusUpdateEvent(task_id=task.id, context_id=task.context_id, status=task.status)
    )
    return parts


async def _entries(fleet: Fleet, task_id: str, cursor: str) -> AsyncIterator[Event]:
    """The task's entries after ``cursor`` that are in the stream now, page by page."""
    while True:
        events, cursor, more = await fleet.events.after(cursor)
        for event in events:
            if event.task_id == task_id:
                yield event
        if not more:
            return


async def _live(fleet: Fleet, subscription: Subscription, cursor: str) -> AsyncIterator[Event]:
    """The task's entries after ``cursor``: those in the stream, then the hub's, in order.

    Entries the hub hands over that the stream read already gave are skipped by id. A
    subscription the hub dropped (`lost`) rejoins, then reads what it missed from the stream.
    """
    catch_up = True
    while True:
        if catch_up:
            async for event in _entries(fleet, subscription.task_id, cursor):
                cursor = event.entry_id
                yield event
            catch_up = False
        if subscription.lost and subscription.queue.empty():
            fleet.hub.rejoin(subscription)
            catch_up = True
            continue
        try:
            event = await asyncio.wait_for(subscription.queue.get(), CHECK_SECONDS)
        except TimeoutError:
            continue  # nothing new: SSE pings keep the connection alive meanwhile
        if entry_key(event.entry_id) > entry_key(cursor):
            cursor = event.entry_id
            yield event


async def follow(
    fleet: Fleet,
    task_id: str,
    record: TaskRecord,
    since: Position | None,
    *,
    fresh: tuple[Task, str] | None = None,
) -> AsyncIterator[A2AEvent]:
    """The task as it is, then its events after ``since`` (default: now) until it ends.

    ``fresh``: the task just submitted, and the newest entry id read before it was, so that its
    own events are all streamed however fast it runs.
    """
    async with fleet.hub.subscribe(task_id) as subscription:
        STREAMS.inc()
        try:
            async for event in _stream(fleet, subscription, record, since, fresh):
                yield event
        finally:
            STREAMS.dec()


async def _stream(
    fleet: Fleet,
    subscription: Subscription,
    record: TaskRecord,
    since: Position | None,
    fresh: tuple[Task, str] | None,
) -> AsyncIterator[A2AEvent]:
    """`follow`'s stream, once the subscription is in place."""
    task_id = subscription.task_id
    if fresh is not None:
        first, start = fresh[0], Position(fresh[1])
    else:
        start = since or Position(await fleet.events.newest())
        first = task_of(task_id, record, await fleet.tasks.result(task_id))
    yield _marked(first, str(start))
    if since is None and first.status.state in TERMINAL:
        return  # nothing is left to happen, and the Task says all that did
    # The entry of ``start`` is read again when only some of its parts were delivered.
    cursor = start.entry if since is None else _before(start.entry)
    async for event in _live(fleet, subscription, cursor):
        parts = await render(fleet, record, event)
        for number, part in enumerate(parts):
            at = Position(event.entry_id, number)
            if since is not None and event.entry_id == since.entry and number <= since.part:
                continue
            yield _marked(part, str(at))
        if event.state is TaskEvent.ENDED and parts:
            return


def _before(entry: str) -> str:
    """The id just before ``entry``, so that a read "after" it includes ``entry`` itself."""
    ms, seq = entry_key(entry)
    if seq > 0:
        return f"{ms}-{seq - 1}"
    return f"{ms - 1}-{2**64 - 1}" if ms > 0 else "0-0"
