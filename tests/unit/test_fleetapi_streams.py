"""Event ids, the hub's fan-out and the event names the Lua scripts write."""

from __future__ import annotations

import asyncio
import json

import pytest
from a2a.utils.errors import InvalidParamsError
from redis.exceptions import TimeoutError as RedisTimeoutError

from newfuse.adapters.a2aevents import Event, entry_key
from newfuse.fleetapi.app import _event_id
from newfuse.fleetapi.hub import QUEUE_SIZE, Hub
from newfuse.fleetapi.streams import Position, _before
from newfuse.wire import scripts
from newfuse.wire.tasks import TaskEvent


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("1-0#0", Position("1-0", 0)),
        ("1796162279633-12#1", Position("1796162279633-12", 1)),
        ("5-0#1000000", Position("5-0")),
    ],
)
def test_position_parses_the_ids_it_writes(value: str, expected: Position) -> None:
    assert Position.parse(value) == expected
    assert str(Position.parse(value)) == value


@pytest.mark.parametrize("value", ["", "x", "1-0", "1-0#", "1-a#0", "a-1#0", "1-0#x"])
def test_position_refuses_other_ids_naming_the_header(value: str) -> None:
    with pytest.raises(InvalidParamsError, match="Last-Event-ID"):
        Position.parse(value)


@pytest.mark.parametrize(
    ("entry", "before"),
    [("5-3", "5-2"), ("5-0", f"4-{2**64 - 1}"), ("0-1", "0-0"), ("0-0", "0-0")],
)
def test_before_is_the_id_just_before(entry: str, before: str) -> None:
    assert _before(entry) == before
    assert entry_key(before) <= entry_key(entry)


def test_entry_keys_order_ids_as_redis_does() -> None:
    ids = ["10-0", "9-5", "9-10", "100-0", "9-9"]
    assert sorted(ids, key=entry_key) == ["9-5", "9-9", "9-10", "10-0", "100-0"]


def _sse(result: object) -> dict[str, str]:
    return {"data": json.dumps({"jsonrpc": "2.0", "id": 1, "result": result})}


@pytest.mark.parametrize(
    ("event", "expected"),
    [
        (_sse({"task": {"id": "t", "metadata": {"newfuse.eventId": "1-0#0"}}}), "1-0#0"),
        (_sse({"statusUpdate": {"metadata": {"newfuse.eventId": "2-0#1"}}}), "2-0#1"),
        (_sse({"task": {"id": "t"}}), None),
        ({"event": "error", "data": "{}"}, None),
        (_sse({"task": {"metadata": {"newfuse.eventId": 7}}}), None),
    ],
    ids=["task", "status update", "no id", "error event", "not a string"],
)
def test_sse_ids_come_from_the_events_metadata(event: dict[str, str], expected: str | None) -> None:
    assert _event_id(event) == expected


def test_every_task_event_the_lua_scripts_write_is_a_known_state() -> None:
    written = set()
    for name in ("COMPLETE_LUA", "CANCEL_LUA", "A2A_SUBMIT_LUA"):
        source = getattr(scripts, name)
        written |= {part.split("'")[1] for part in source.split("'state', ")[1:]}
    assert written == {TaskEvent.ENDED.value, TaskEvent.SUBMITTED.value}
    assert f"'{scripts.COUNTER_CANCELED}'" in scripts.CANCEL_LUA


class _Log:
    """An event stream in memory: `wait` hands out what `add` put after the given id."""

    key = "events"

    def __init__(self) -> None:
        self.entries: list[Event] = []
        self.changed = asyncio.Event()
        self.reads = 0

    def add(self, task_id: str, state: TaskEvent = TaskEvent.WORKING) -> Event:
        event = Event(f"{len(self.entries) + 1}-0", task_id, state)
        self.entries.append(event)
        self.changed.set()
        return event

    async def newest(self) -> str:
        return self.entries[-1].entry_id if self.entries else "0-0"

    async def wait(self, after: str, block_ms: int) -> tuple[list[Event], str]:
        self.reads += 1
        new = [e for e in self.entries if entry_key(e.entry_id) > entry_key(after)]
        if not new:
            self.changed.clear()
            await asyncio.wait_for(self.changed.wait(), block_ms / 1000)
            return [], after
        return new, new[-1].entry_id


async def _drain(queue: asyncio.Queue[Event]) -> list[Event]:
    await asyncio.sleep(0.05)
    found = []
    while not queue.empty():
        found.append(queue.get_nowait())
    return found


@pytest.mark.asyncio
async def test_the_hub_hands_each_subscriber_its_own_tasks_events_from_subscription_on() -> None:
    log = _Log()
    log.add("a")  # before anybody subscribed: the subscriber reads it from the stream itself
    hub = Hub(log, block_ms=1000)  # type: ignore[arg-type]
    async with hub.subscribe("a") as first, hub.subscribe("b") as second:
        mine = [log.add("a"), log.add("a", TaskEvent.ENDED)]
        theirs = log.add("b")
        assert await _drain(first.queue) == mine
        assert await _drain(second.queue) == [theirs]
    await asyncio.sleep(0.05)
    reads = log.reads
    log.add("a")
    await asyncio.sleep(0.05)
    assert log.reads == reads, "the reader goes on without subscribers"


@pytest.mark.asyncio
async def test_a_subscriber_whose_queue_overflows_is_marked_lost_and_dropped() -> None:
    log = _Log()
    hub = Hub(log, block_ms=1000)  # type: ignore[arg-type]
    async with hub.subscribe("flood") as flooded, hub.subscribe("calm") as calm:
        for _ in range(QUEUE_SIZE + 1):
            log.add("flood")
        last = log.add("calm")
        await asyncio.sleep(0.1)
        assert flooded.lost
        assert flooded.queue.qsize() == QUEUE_SIZE
        assert await _drain(calm.queue) == [last], "one flooded task must not stall others"


class _SwallowsCancellation(_Log):
    """A read that turns a cancellation into a Redis timeout, as redis-py's pool wait does."""

    async def wait(self, after: str, block_ms: int) -> tuple[list[Event], str]:
        try:
            return await super().wait(after, block_ms)
        except asyncio.CancelledError:
            raise RedisTimeoutError("timed out waiting for a connection") from None


@pytest.mark.asyncio
@pytest.mark.timeout(20)  # without the fix the leaked readers never end
async def test_a_reader_whose_cancellation_is_swallowed_still_stops() -> None:
    log = _SwallowsCancellation()
    hub = Hub(log, block_ms=200, retry_seconds=0.01)  # type: ignore[arg-type]
    before = len(asyncio.all_tasks())
    for n in range(50):
        async with hub.subscribe(f"t{n}"):
            await asyncio.sleep(0.005)
    await asyncio.sleep(0.3)
    assert len(asyncio.all_tasks()) == before, "every reader ended: none holds a connection"
    reads = log.reads
    await asyncio.sleep(0.3)
    assert log.reads == reads
