"""Hostile input at the agent's process boundary: any bytes on any channel are refused once.

A fleet on the real control plane (default task policy, signatures required through
`spec.signing`) runs one agent process, started from its pod by the pod runner, on a real Redis.
Each table entry is written straight to the task stream, as anybody with access to it could: it
must be dead-lettered exactly once with its reason, within the claim bound, with a FAILED result
when it names a task id (so a waiting client returns at once), and the agent must keep working.
The same bytes on the coordination channel must leave the listener answering pings, and
hypothesis then throws arbitrary stream entries at the same process.
"""

from __future__ import annotations

import datetime as dt
import time
from pathlib import Path
from typing import Any, cast

import orjson
import pytest
import redis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from kubernetes import client as k8s_client

from harness import Fleets, RedisHandle, agents_of, signing_secret, start_fleet
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.adapters.taskclient import StreamEntries
from newfuse.wire.envelope import MessageType, encode
from newfuse.wire.keys import FleetKeys
from newfuse.wire.signing import Channel, Signer
from newfuse.wire.taskpolicy import TaskPolicy
from newfuse.wire.tasks import CONSUMER_GROUP, PRIORITY_ORDER, Priority

KEY = b"hostile-input-test-key-of-32-bytes-or-more"
SIGNER = Signer(KEY)
CLAIM_BOUND = TaskPolicy().claim_bound_seconds


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def _task(keys: FleetKeys, task_id: str, handler: str = "echo", **kwargs: Any) -> bytes:
    payload: dict[str, Any] = {
        "task_id": task_id,
        "handler": handler,
        "input": kwargs.pop("input", 1),
    }
    now = kwargs.pop("now", _now())
    to = keys.audience(Channel.TASKS)
    return encode(
        MessageType.TASK, payload, "tester", now=now, audience=to, signer=SIGNER, **kwargs
    )


def _tampered(raw: bytes, **metadata: Any) -> bytes:
    data = orjson.loads(raw)
    data["metadata"].update(metadata)
    return orjson.dumps(data)


def hostile_table(keys: FleetKeys) -> dict[str, tuple[str, str | None, bytes]]:
    """name -> (expected reason, task id field, envelope bytes), for the fleet at ``keys``."""
    other_fleet = FleetKeys(keys.namespace, "another-fleet")
    other_key = Signer(b"another-fleet-key-of-32-bytes-or-more")
    to = keys.audience(Channel.TASKS)
    return {
        "non-JSON": ("malformed_json", None, b"{not json"),
        "not UTF-8": ("malformed_json", None, b"\xff\xfe\x00garbage"),
        "non-ASCII signature": (
            "invalid_envelope",
            "sig",
            _tampered(_task(keys, "sig"), signature="é" * 64),
        ),
        "5,000-digit version": (
            "invalid_envelope",
            "ver",
            _tampered(_task(keys, "ver"), protocol_version="1" * 5000 + ".0"),
        ),
        "2 MiB payload": ("oversize", "big", _task(keys, "big", input="x" * (2 * 1024 * 1024))),
        "wrong types": (
            "invalid_payload",
            None,
            encode(
                MessageType.TASK,
                {"task_id": 5, "handler": ["x"]},
                "t",
                now=_now(),
                audience=to,
                signer=SIGNER,
            ),
        ),
        # Signed with the shared key, but for another fleet: no result, it is not ours to answer.
        "another fleet's task": ("wrong_audience", None, _task(other_fleet, "elsewhere")),
        "unknown key id": (
            "unknown_key",
            None,
            encode(
                MessageType.TASK, {"task_id": "k"}, "t", now=_now(), audience=to, signer=other_key
            ),
        ),
        "unknown handler": (
            "unknown_handler",
            "nohandler",
            _task(keys, "nohandler", handler="nope"),
        ),
        "future timestamp": (
            "future_timestamp",
            "future",
            _task(keys, "future", now=_now() + dt.timedelta(hours=1)),
        ),
    }


class PodAgent:
    """The fleet's one agent process, as the pod runner started it."""

    def __init__(self, runner: PodRunnerProcess, namespace: str) -> None:
        [self.entry] = agents_of(runner, namespace)
        self.runner, self.namespace = runner, namespace
        self.agent_id = self.entry.pod

    @property
    def alive(self) -> bool:
        """Still the same process: not exited, not restarted by the runner."""
        now = [a for a in agents_of(self.runner, self.namespace) if a.pod == self.entry.pod]
        return bool(now) and now[0].pid == self.entry.pid and now[0].restarts == self.entry.restarts

    def output(self) -> str:
        return Path(self.entry.log).read_text(errors="replace")


@pytest.fixture
def fleet(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_client: redis.Redis,
    k8s_api: k8s_client.ApiClient,
) -> tuple[FleetKeys, redis.Redis, PodAgent]:
    ns = fleets.namespace
    signing = {**signing_secret(k8s_api, ns, KEY.decode()), "required": True}
    start_fleet(fleets, pod_runner, redis_client, "hostile", 1, fast=False, signing=signing)
    return FleetKeys(ns, "hostile"), redis_client, PodAgent(pod_runner, ns)


def _letters(client: redis.Redis, keys: FleetKeys) -> list[dict[str, str]]:
    entries = cast(StreamEntries, client.xrange(keys.dead_letters))
    return [fields for _, fields in entries]


def _submit(client: redis.Redis, keys: FleetKeys, task_id: str, raw: bytes) -> None:
    client.hset(keys.task_index, task_id, "x")
    client.xadd(keys.tasks(Priority.NORMAL), {"task_id": task_id, "envelope": raw})


def test_each_hostile_input_is_dead_lettered_once_with_its_reason(
    fleet: tuple[FleetKeys, redis.Redis, PodAgent],
) -> None:
    keys, client, agent = fleet
    stream = keys.tasks(Priority.NORMAL)
    table = hostile_table(keys)
    original = _task(keys, "replayed-task")
    started = time.monotonic()
    for _, task_id, raw in table.values():
        fields: dict[Any, Any] = {"envelope": raw}
        if task_id is not None:
            fields["task_id"] = task_id
        client.xadd(stream, fields)
    # A replay: the same signed message under a second entry.
    client.xadd(stream, {"task_id": "replayed-task", "envelope": original})
    client.xadd(stream, {"task_id": "replayed-task", "envelope": original})
    expected = sorted([*(reason for reason, _, _ in table.values()), "replayed"])
    wait_for(lambda: len(_letters(client, keys)) >= len(expected), CLAIM_BOUND, what="letters")
    elapsed = time.monotonic() - started
    wait_for(lambda: client.hexists(keys.result_index, "replayed-task"), 10, what="original ran")
    wait_for(lambda: client.xlen(stream) == 0, 10, what="every entry acknowledged and deleted")
    assert sorted(d["reason"] for d in _letters(client, keys)) == expected, "each exactly once"
    print(f"{len(expected)} hostile entries dead-lettered in {elapsed:.2f}s")
    for reason, task_id, _ in table.values():
        if task_id is None:
            continue
        result = orjson.loads(client.hget(keys.result_index, task_id) or "{}")["payload"]
        assert (result["status"], result["reason"]) == ("failed", reason), task_id
    pending = sum(client.xpending(keys.tasks(p), CONSUMER_GROUP)["pending"] for p in PRIORITY_ORDER)
    assert pending == 0
    assert agent.alive
    _submit(client, keys, "after", _task(keys, "after", input="still working"))
    wait_for(lambda: client.hexists(keys.result_index, "after"), 10, what="a task after them")


def test_the_same_bytes_on_the_coordination_channel_leave_the_listener_working(
    fleet: tuple[FleetKeys, redis.Redis, PodAgent], redis_server: RedisHandle
) -> None:
    keys, client, agent = fleet
    raw_client = redis.Redis.from_url(redis_server.url)  # the hostile bytes are not UTF-8
    listener = raw_client.pubsub()  # type: ignore[no-untyped-call]
    listener.subscribe(keys.coordination_channel)
    for _, _, raw in hostile_table(keys).values():
        client.publish(keys.coordination_channel, raw)
    to = keys.audience(Channel.COORDINATION)
    ping = encode(
        MessageType.PING, {"target": "*"}, "tester", now=_now(), audience=to, signer=SIGNER
    )
    client.publish(keys.coordination_channel, ping)
    deadline = time.monotonic() + 10
    pong = None
    while pong is None and time.monotonic() < deadline:
        message = listener.get_message(timeout=0.5)
        if message and message["type"] == "message":
            try:
                data = orjson.loads(message["data"])
            except orjson.JSONDecodeError:
                continue  # this test hears the hostile bytes too
            if isinstance(data, dict) and data.get("type") == "pong":
                pong = data
    listener.close()
    raw_client.close()
    assert pong is not None, "a signed ping after the hostile bytes still gets its pong"
    assert pong["payload"]["agent_id"] == agent.agent_id
    assert agent.alive


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)  # what orjson can write
    | st.floats(allow_nan=False)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)
envelopes = st.builds(
    lambda t, p, m: orjson.dumps({"type": t, "payload": p, "metadata": m}),
    st.sampled_from(["task", "result", "ping", "drain", "x"]) | st.text(max_size=5),
    json_values,
    st.fixed_dictionaries(
        {},
        optional={
            "timestamp": st.datetimes().map(lambda d: d.isoformat()) | st.text(max_size=30),
            "sender": st.text(max_size=10),
            "protocol_version": st.text(max_size=12) | st.just("1.0"),
            "message_id": st.text(max_size=12),
            "signature": st.text(max_size=70),
        },
    ),
)
entries = st.fixed_dictionaries(
    {"envelope": envelopes | st.binary(max_size=200) | st.text(max_size=50)},
    optional={"task_id": st.text(max_size=20) | st.binary(max_size=10), "x": st.binary(max_size=8)},
)


@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(entry=entries)
def test_fuzz_the_agent_process_at_its_stream(
    fleet: tuple[FleetKeys, redis.Redis, PodAgent], entry: dict[Any, Any]
) -> None:
    keys, client, agent = fleet
    before = client.xlen(keys.dead_letters)
    client.xadd(keys.tasks(Priority.NORMAL), entry)
    wait_for(lambda: client.xlen(keys.dead_letters) > before, 10, what="the entry dead-lettered")
    wait_for(lambda: client.xlen(keys.tasks(Priority.NORMAL)) == 0, 10, what="the entry gone")
    assert client.xlen(keys.dead_letters) == before + 1, "dead-lettered exactly once"
    assert agent.alive, agent.output()[-2000:]
