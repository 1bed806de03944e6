"""`newfuse dlq --requeue-all` never launders a refused message, and never undoes a success.

A requeue signs the task again with the requeuer's key. Requeueing an unsigned, forged or
replayed letter would turn it into a valid task, and deleting the result index entry of a task
that succeeded (the original of a replay, the real task a forgery copied) would run it twice.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any, cast

import orjson
import pytest
import redis

from clitool import cli, mirrored_fleet
from harness import RedisHandle
from newfuse.adapters.taskclient import StreamEntries
from newfuse.wire.envelope import MessageType, encode
from newfuse.wire.keys import FleetKeys
from newfuse.wire.signing import Channel, Signer
from newfuse.wire.tasks import Priority

KEY = "dlq-requeue-test-key-0123456789abcdef"


@pytest.fixture
def fleet(redis_server: RedisHandle, redis_client: redis.Redis) -> Iterator[FleetKeys]:
    yield from mirrored_fleet(redis_server, redis_client, "dlq")


def _task(keys: FleetKeys, task_id: str, signer: Signer | None) -> bytes:
    payload = {"task_id": task_id, "handler": "echo", "input": task_id}
    now = dt.datetime.now(dt.UTC)
    return encode(
        MessageType.TASK,
        payload,
        "c",
        now=now,
        audience=keys.audience(Channel.TASKS),
        signer=signer,
    )


def _result(keys: FleetKeys, task_id: str, status: str) -> bytes:
    payload = {
        "task_id": task_id,
        "status": status,
        "agent_id": "agent-0",
        "output": task_id,
        "finished_at": dt.datetime.now(dt.UTC).isoformat(),
    }
    now = dt.datetime.now(dt.UTC)
    to = keys.audience(Channel.RESULTS)
    return encode(
        MessageType.RESULT, payload, "agent-0", now=now, audience=to, signer=Signer(KEY.encode())
    )


@pytest.fixture
def letters(redis_client: redis.Redis, fleet: FleetKeys) -> dict[str, str]:
    """Five dead letters (reason -> entry id); succeeded results stored for two of their tasks."""
    forged = Signer(b"not-the-fleet-key-0123456789abcdefgh", kid=Signer(KEY.encode()).kid)
    raws: dict[str, tuple[str, bytes]] = {
        "unsigned": ("u-1", _task(fleet, "u-1", None)),
        "bad_signature": ("f-1", _task(fleet, "f-1", forged)),
        "replayed": ("r-1", _task(fleet, "r-1", Signer(KEY.encode()))),
        "handler_failed": ("h-1", _task(fleet, "h-1", Signer(KEY.encode()))),
        "timeout": ("s-1", _task(fleet, "s-1", Signer(KEY.encode()))),
    }
    now = dt.datetime.now(dt.UTC).isoformat()
    ids = {}
    for reason, (task_id, raw) in raws.items():
        letter: dict[Any, Any] = {
            "reason": reason, "detail": "x", "agent_id": "agent-0", "source_stream": "s",
            "at": now, "raw": raw, "task_id": task_id,
        }  # fmt: skip
        ids[reason] = cast(str, redis_client.xadd(fleet.dead_letters, letter))
    # The real task a forgery copied, and the original of the replay, both succeeded; so did s-1
    # (a late success after its timeout letter); h-1 failed and is the one to requeue.
    for task_id, status in (("f-1", "succeeded"), ("r-1", "succeeded"), ("s-1", "succeeded")):
        redis_client.hset(fleet.result_index, task_id, _result(fleet, task_id, status))
    redis_client.hset(fleet.result_index, "h-1", _result(fleet, "h-1", "failed"))
    return ids


def test_requeue_all_skips_security_refusals_and_successes_with_their_reasons(
    redis_server: RedisHandle,
    redis_client: redis.Redis,
    fleet: FleetKeys,
    letters: dict[str, str],
) -> None:
    before = redis_client.hgetall(fleet.result_index)
    env = {"NEWFUSE_SIGNING_KEY": KEY}
    base = ("dlq", fleet.fleet, "-n", fleet.namespace, "--requeue-all")
    run = cli(*base, redis_url=redis_server.url, env=env)
    assert run.returncode == 0, run.stderr
    assert "requeued 1 task(s)" in run.stdout
    skipped = " ".join(run.stderr.split())  # rich wraps long lines
    for reason in ("unsigned", "bad_signature", "replayed"):
        assert f"skipped {letters[reason]}: refused as {reason}" in skipped, skipped
    assert f"skipped {letters['timeout']}: task s-1 has succeeded: kept" in skipped
    after = redis_client.hgetall(fleet.result_index)
    for task_id in ("f-1", "r-1", "s-1"):
        assert after[task_id] == before[task_id], f"{task_id}'s result untouched"
    assert "h-1" not in after, "the failed one was requeued: its old result forgotten"
    [(_, fields)] = cast(StreamEntries, redis_client.xrange(fleet.tasks(Priority.NORMAL)))
    assert orjson.loads(fields["envelope"])["payload"]["task_id"] == "h-1"
    remaining = {
        f["reason"] for _, f in cast(StreamEntries, redis_client.xrange(fleet.dead_letters))
    }
    assert remaining == {"unsigned", "bad_signature", "replayed", "timeout"}

    # --force lets the security refusals through, but still never a task that succeeded.
    forced = cli(*base, "--force", redis_url=redis_server.url, env=env)
    assert "requeued 1 task(s)" in forced.stdout, forced.stderr
    after_force = redis_client.hgetall(fleet.result_index)
    for task_id in ("f-1", "r-1", "s-1"):
        assert after_force[task_id] == before[task_id], f"{task_id}'s success kept under --force"
