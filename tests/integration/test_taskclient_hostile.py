"""The task client against a real redis-server: hostile stream bytes, unreadable results, oversize
tasks, and the timeout and deadline a task carries.

Anybody who reaches the fleet's Redis can XADD anything to its result stream. The fuzz test writes
random field maps there (not JSON, wrong types, missing fields, huge values, bytes that are not
UTF-8), then one valid result, and `follow()` must yield the valid result and report every other
entry, without raising.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import uuid
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from harness import RedisHandle
from localcluster import wait_for
from newfuse.adapters.streamread import MalformedEntry
from newfuse.adapters.taskclient import TaskClient, TaskSpec
from newfuse.adapters.taskerrors import MalformedResultError, PayloadTooLargeError
from newfuse.wire.envelope import MessageType, encode
from newfuse.wire.keys import FleetKeys
from newfuse.wire.taskpolicy import MIB
from newfuse.wire.tasks import Priority, ResultPayload, TaskPayload

NOW = dt.datetime.now(dt.UTC)


def result_envelope(task_id: str, **changes: Any) -> bytes:
    payload: dict[str, Any] = {
        "task_id": task_id,
        "status": "succeeded",
        "output": {"ok": True},
        "agent_id": "agent-0",
        "finished_at": NOW.isoformat(),
        **changes,
    }
    return encode(MessageType.RESULT, payload, "agent-0", now=NOW)


def run_client(url: str, keys: FleetKeys, body: Any, **kwargs: Any) -> Any:
    async def main() -> Any:
        client = TaskClient.from_url(url, keys.namespace, keys.fleet, **kwargs)
        try:
            return await body(client)
        finally:
            await client.aclose()

    return asyncio.run(main())


@pytest.fixture
def keys(redis_server: RedisHandle) -> Iterator[FleetKeys]:
    fleet = FleetKeys("hostile", f"f{uuid.uuid4().hex[:8]}")
    yield fleet
    client = redis.Redis.from_url(redis_server.url)
    client.delete(*fleet.all_keys())
    client.close()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=30),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=10), children, max_size=4)
    ),
    max_leaves=10,
)
result_fields = st.sampled_from(
    ["task_id", "status", "output", "error", "agent_id", "attempts", "latency_ms", "finished_at",
     "reason", "history"]
)  # fmt: skip


def huge(kind: int) -> bytes:
    """Huge values, built only when drawn (so hypothesis never prints them whole)."""
    if kind == 0:
        return b'"' + b"x" * MIB + b'"'  # a megabyte string
    if kind == 1:
        return b"[" * 5000 + b"]" * 5000  # nesting past the parser's limit
    if kind == 2:
        return b'{"type": "result", "payload": {"latency_ms": 1e999}}'  # out of float range
    return result_envelope("huge", attempts=2**63 - 1, output="y" * MIB)  # valid, and huge


def mangled(changes: dict[str, Any]) -> bytes:
    """A result envelope with some fields replaced by values of any type (None: removed)."""
    payload = orjson.loads(result_envelope("mangled"))["payload"]
    for name, value in changes.items():
        if value is None:
            payload.pop(name, None)
        else:
            payload[name] = value
    return encode(MessageType.RESULT, payload, "agent-0", now=NOW)


values = st.one_of(
    st.binary(max_size=200),  # mostly not UTF-8, never an envelope
    json_values.map(lambda v: orjson.dumps(v, option=orjson.OPT_NON_STR_KEYS)),
    st.dictionaries(result_fields, json_values, min_size=1, max_size=3).map(mangled),
    st.sampled_from(list(MessageType)).map(lambda t: encode(t, {"task_id": "x"}, "a", now=NOW)),
    st.integers(min_value=0, max_value=3).map(huge),
    st.integers().map(lambda n: b'{"type": "result", "payload": {"attempts": %d}}' % n),
)
field_maps = st.dictionaries(
    st.one_of(st.just(b"envelope"), st.just(b"task_id"), st.binary(min_size=1, max_size=8)),
    values,
    min_size=1,
    max_size=3,
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(entries=st.lists(field_maps, min_size=1, max_size=5))
def test_follow_skips_and_reports_hostile_entries_and_yields_the_valid_one(
    redis_server: RedisHandle, entries: list[dict[bytes, bytes]]
) -> None:
    keys = FleetKeys("hostile", f"fuzz{uuid.uuid4().hex[:8]}")
    writer = redis.Redis.from_url(redis_server.url)
    try:
        for fields in entries:
            writer.xadd(keys.result_stream, fields)  # type: ignore[arg-type]
        sentinel = f"valid-{uuid.uuid4().hex[:8]}"
        writer.xadd(
            keys.result_stream, {"task_id": sentinel, "envelope": result_envelope(sentinel)}
        )
        skipped: list[MalformedEntry] = []

        async def watch(client: TaskClient) -> list[ResultPayload]:
            seen: list[ResultPayload] = []
            async with asyncio.timeout(30):
                async for _, result in client.follow(
                    "0", block_ms=200, on_malformed=skipped.append
                ):
                    seen.append(result)
                    if result.task_id == sentinel:
                        return seen
            raise AssertionError("unreachable")

        seen = run_client(redis_server.url, keys, watch)
    finally:
        writer.delete(keys.result_stream)
        writer.close()
    assert seen[-1].task_id == sentinel
    assert seen[-1].output == {"ok": True}
    assert len(seen) + len(skipped) == len(entries) + 1, "every entry is yielded or reported"
    assert all(s.reason and len(s.detail) <= 300 for s in skipped)


@pytest.mark.asyncio
async def test_follow_from_now_skips_what_was_there_and_reports_what_comes(
    redis_server: RedisHandle, keys: FleetKeys
) -> None:
    writer = redis.Redis.from_url(redis_server.url)
    writer.xadd(keys.result_stream, {"envelope": result_envelope("old")})
    name = f"watch-{uuid.uuid4().hex[:8]}"

    def watcher_blocked() -> bool:
        return any(c.get("name") == name and c.get("cmd") == "xread" for c in writer.client_list())

    async def scenario() -> tuple[list[str], list[MalformedEntry]]:
        seen: list[str] = []
        skipped: list[MalformedEntry] = []
        client = TaskClient(
            aioredis.Redis.from_url(redis_server.url, client_name=name), keys.namespace, keys.fleet
        )

        async def watch() -> None:
            async for _, result in client.follow("$", block_ms=5000, on_malformed=skipped.append):
                seen.append(result.task_id)
                return

        try:
            task = asyncio.create_task(watch())
            await asyncio.to_thread(wait_for, watcher_blocked, 30, what="the watcher in XREAD")
            writer.xadd(keys.result_stream, {"envelope": b"\xff garbage"})
            writer.xadd(keys.result_stream, {"envelope": result_envelope("new")})
            async with asyncio.timeout(30):
                await task
        finally:
            await client.aclose()
        return seen, skipped

    try:
        seen, skipped = await scenario()
    finally:
        writer.close()
    assert seen == ["new"]
    assert [s.reason for s in skipped] == ["malformed_json"]


@pytest.mark.parametrize(
    ("stored", "reason"),
    [
        (b"\xff\xfe", "malformed_json"),
        (b"{}", "invalid_envelope"),
        (result_envelope("t-1", status="perhaps"), "invalid_payload"),
        (result_envelope("someone-else"), "wrong_task"),
    ],
    ids=["not utf-8", "not an envelope", "bad payload", "another task's result"],
)
def test_an_unreadable_stored_result_is_a_clear_error_at_once(
    redis_server: RedisHandle, keys: FleetKeys, stored: bytes, reason: str
) -> None:
    """result() and wait() raise MalformedResultError: the index never replaces a first result,
    so waiting on would only time out without saying why."""
    writer = redis.Redis.from_url(redis_server.url)
    writer.hset(keys.result_index, "t-1", stored)
    writer.close()

    async def body(client: TaskClient) -> None:
        with pytest.raises(MalformedResultError) as caught:
            await client.result("t-1")
        assert caught.value.reason == reason
        assert "the stored result of task t-1 is unreadable" in str(caught.value)
        started = asyncio.get_running_loop().time()
        with pytest.raises(MalformedResultError):
            await client.wait("t-1", timeout=30)
        assert asyncio.get_running_loop().time() - started < 5, "no waiting for the timeout"
        assert await client.result("t-2") is None

    run_client(redis_server.url, keys, body)


def test_an_oversize_task_is_refused_before_anything_is_written(
    redis_server: RedisHandle, keys: FleetKeys
) -> None:
    async def body(client: TaskClient) -> None:
        assert client.max_payload_bytes == MIB, "the default is the fleet policy's default"
        await client.submit(TaskSpec("echo", "x" * (MIB // 2)))
        with pytest.raises(PayloadTooLargeError) as caught:
            await client.submit(TaskSpec("echo", "x" * MIB, task_id="big"))
        assert caught.value.limit == MIB
        assert caught.value.size > MIB
        assert f"task big: the encoded task is {caught.value.size:,} bytes" in str(caught.value)
        assert f"over the limit of {MIB:,} bytes" in str(caught.value)
        # In bulk, batches before the oversize task are submitted; its own batch is not.
        specs = [*(TaskSpec("echo", i) for i in range(4)), TaskSpec("echo", "x" * MIB)]
        with pytest.raises(PayloadTooLargeError):
            async for _ in client.submit_many(specs, batch=3):
                pass

    run_client(redis_server.url, keys, body)
    reader = redis.Redis.from_url(redis_server.url)
    try:
        assert reader.xlen(keys.tasks(Priority.NORMAL)) == 1 + 3
        assert not reader.hexists(keys.task_index, "big")
    finally:
        reader.close()


def test_a_smaller_limit_is_the_callers_choice(redis_server: RedisHandle, keys: FleetKeys) -> None:
    async def body(client: TaskClient) -> None:
        with pytest.raises(PayloadTooLargeError, match="over the limit of 2,000 bytes"):
            await client.submit(TaskSpec("echo", "x" * 2000))
        await client.submit(TaskSpec("echo", "x" * 1000))

    run_client(redis_server.url, keys, body, max_payload_bytes=2000)


def test_timeout_and_deadline_travel_in_the_task(
    redis_server: RedisHandle, keys: FleetKeys
) -> None:
    plus_two = dt.timezone(dt.timedelta(hours=2))
    deadline = (NOW + dt.timedelta(minutes=10)).astimezone(plus_two)

    async def body(client: TaskClient) -> None:
        await client.submit(
            TaskSpec("echo", 1, task_id="set", timeout_seconds=30, deadline=deadline)
        )
        await client.submit(TaskSpec("echo", 2, task_id="default"))
        with pytest.raises(ValueError, match="timezone-aware"):
            await client.submit(
                TaskSpec("echo", 3, task_id="naive", deadline=dt.datetime(2030, 1, 1))
            )

    run_client(redis_server.url, keys, body)
    reader = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        stored = reader.xrange(keys.tasks(Priority.NORMAL))
    finally:
        reader.close()
    payloads = {
        p["task_id"]: p for p in (orjson.loads(f["envelope"])["payload"] for _, f in stored)
    }
    assert set(payloads) == {"set", "default"}
    assert payloads["set"]["timeout_seconds"] == 30
    assert dt.datetime.fromisoformat(payloads["set"]["deadline"]) == deadline
    assert payloads["set"]["deadline"].endswith(("Z", "+00:00")), "deadlines travel in UTC"
    # Defaults are left out of the envelope: a reader fills them in.
    assert payloads["default"].keys() == {"task_id", "handler", "input"}
    read = TaskPayload.model_validate(payloads["default"])
    assert read.timeout_seconds is None, "None: the fleet's default"
    assert read.deadline is None
