"""The `newfuse` CLI as a user runs it (the installed console script) against the real Redis.

Besides submitting and listing: a task's timeout and deadline, the refusal of an oversize task
before anything is written, results and dead letters shown with their reason and attempt history,
and a watch that survives entries of the result stream that are not results.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from typing import Any, cast

import orjson
import pytest
import redis

from clitool import cli, mirrored_fleet
from harness import RedisHandle
from localcluster.netutil import free_port
from newfuse.adapters.taskclient import StreamEntries
from newfuse.wire.envelope import MessageType, encode
from newfuse.wire.keys import FleetKeys
from newfuse.wire.tasks import AttemptRecord, Priority, TaskPayload


@pytest.fixture
def fleet(redis_server: RedisHandle, redis_client: redis.Redis) -> Iterator[FleetKeys]:
    """A fleet the operator would have mirrored to Redis (its state key exists)."""
    yield from mirrored_fleet(redis_server, redis_client, "cli")


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


def _payloads(redis_client: redis.Redis, keys: FleetKeys) -> dict[str, dict[str, Any]]:
    entries = cast(StreamEntries, redis_client.xrange(keys.tasks(Priority.NORMAL)))
    return {fields["task_id"]: orjson.loads(fields["envelope"])["payload"] for _, fields in entries}


def test_submit_states_a_timeout_and_a_deadline_or_leaves_them_to_the_fleet(
    redis_server: RedisHandle, redis_client: redis.Redis, fleet: FleetKeys
) -> None:
    base = ("task", "submit", fleet.fleet, "-n", fleet.namespace)
    before = dt.datetime.now(dt.UTC)
    stated = cli(*base, "--id", "stated", "--task-timeout", "30", "--deadline", "10m",
                 redis_url=redis_server.url)  # fmt: skip
    assert stated.returncode == 0, stated.stderr
    absolute = cli(*base, "--id", "absolute", "--deadline", "2099-01-01T10:00:00+02:00",
                   redis_url=redis_server.url)  # fmt: skip
    assert absolute.returncode == 0, absolute.stderr
    default = cli(*base, "--id", "default", redis_url=redis_server.url)
    assert default.returncode == 0, default.stderr
    payloads = _payloads(redis_client, fleet)
    assert payloads["stated"]["timeout_seconds"] == 30
    deadline = dt.datetime.fromisoformat(payloads["stated"]["deadline"])
    assert before + dt.timedelta(minutes=10) <= deadline <= before + dt.timedelta(minutes=11)
    assert payloads["absolute"]["deadline"] == "2099-01-01T08:00:00Z"
    # Left out of the envelope (defaults are): a reader takes None, the fleet's default timeout.
    assert "timeout_seconds" not in payloads["default"]
    assert "deadline" not in payloads["default"]
    for flags, message in [
        (("--deadline", "soon"), "is neither a duration like 90s"),
        (("--deadline", "2001-01-01T00:00:00Z"), "is already past"),
        (("--task-timeout", "0"), "must be more than 0"),
    ]:
        refused = cli(*base, *flags, redis_url=redis_server.url)
        assert refused.returncode == 2, refused.stderr
        assert message in refused.stderr
        assert "Traceback" not in refused.stderr
    assert len(_payloads(redis_client, fleet)) == 3, "a refused task writes nothing"


def test_an_oversize_task_is_refused_with_its_size_and_the_limit(
    redis_server: RedisHandle, redis_client: redis.Redis, fleet: FleetKeys
) -> None:
    base = ("task", "submit", fleet.fleet, "-n", fleet.namespace, "--payload", "x" * 5000)
    flag = cli(*base, "--max-payload-bytes", "2000", redis_url=redis_server.url)
    assert flag.returncode == 1
    assert "bytes, over the limit of 2,000 bytes" in flag.stderr
    assert "Traceback" not in flag.stderr
    env = {"NEWFUSE_MAX_PAYLOAD_BYTES": "4000"}
    bulk = cli(*base, "--count", "3", redis_url=redis_server.url, env=env)
    assert bulk.returncode == 1
    assert "over the limit of 4,000 bytes" in bulk.stderr
    assert redis_client.xlen(fleet.tasks(Priority.NORMAL)) == 0, "nothing was written"
    assert redis_client.hlen(fleet.task_index) == 0
    fits = cli(*base, redis_url=redis_server.url)  # the default limit is 1 MiB
    assert fits.returncode == 0, fits.stderr


def _failed_result(task_id: str) -> bytes:
    now = dt.datetime.now(dt.UTC)
    history = [
        {"attempt": 1, "at": (now - dt.timedelta(seconds=30)).isoformat(), "error": "worker lost",
         "agent_id": "agent-0", "retry_in_seconds": 2.0},
        {"attempt": 2, "at": (now - dt.timedelta(seconds=10)).isoformat(), "error": "slow model",
         "agent_id": "agent-1"},
    ]  # fmt: skip
    payload = {"task_id": task_id, "status": "failed", "error": "no answer within 600s",
               "reason": "timeout", "agent_id": "agent-2", "attempts": 3, "latency_ms": 600000.0,
               "finished_at": now.isoformat(), "history": history}  # fmt: skip
    return encode(MessageType.RESULT, payload, "agent-2", now=now)


def test_get_and_wait_show_a_results_reason_and_history(
    redis_server: RedisHandle, redis_client: redis.Redis, fleet: FleetKeys
) -> None:
    redis_client.hset(fleet.result_index, "done-1", _failed_result("done-1"))
    redis_client.hset(fleet.result_index, "broken-1", b"\xff{not a result")
    where = (fleet.fleet, "-n", fleet.namespace)
    shown = cli("task", "get", *where, "done-1", redis_url=redis_server.url)
    assert shown.returncode == 3, shown.stderr  # the task failed
    expected = ["status    failed", "reason    timeout", "attempts  3", "agent-1",
                "error     no answer within 600s", "worker lost", "slow model"]  # fmt: skip
    assert [e for e in expected if e not in shown.stdout] == [], shown.stdout
    as_json = cli("task", "wait", *where, "done-1", "--json", redis_url=redis_server.url)
    assert as_json.returncode == 3, as_json.stderr
    result = json.loads(as_json.stdout)
    assert result["reason"] == "timeout"
    assert [h["error"] for h in result["history"]] == ["worker lost", "slow model"]
    missing = cli("task", "get", *where, "nope", redis_url=redis_server.url)
    assert missing.returncode == 4
    assert "has no result" in missing.stdout
    broken = cli("task", "wait", *where, "broken-1", "--timeout", "30", redis_url=redis_server.url)
    assert broken.returncode == 1
    assert "the stored result of task broken-1 is unreadable: malformed_json" in broken.stderr


def test_dlq_shows_reason_attempts_times_and_the_tasks_history(
    redis_server: RedisHandle, redis_client: redis.Redis, fleet: FleetKeys
) -> None:
    now = dt.datetime.now(dt.UTC)
    history = [
        AttemptRecord(attempt=1, at=now, error="boom", agent_id="agent-0", retry_in_seconds=2),
        AttemptRecord(attempt=2, at=now, error="bang", agent_id="agent-1"),
    ]
    task = TaskPayload(task_id="dead-2", handler="echo", attempt=3, history=history)
    raw = encode(MessageType.TASK, task.model_dump(mode="json"), "x", now=now)
    redis_client.xadd(fleet.dead_letters, {
        "reason": "exhausted", "detail": "3 attempts failed", "raw": raw, "agent_id": "agent-2",
        "source_stream": "s", "task_id": "dead-2", "attempts": 3, "at": now.isoformat(),
    })  # fmt: skip
    redis_client.xadd(fleet.dead_letters, {"junk": b"\xff"})
    listing = cli("dlq", fleet.fleet, "-n", fleet.namespace, redis_url=redis_server.url)
    assert listing.returncode == 0, listing.stderr
    out = listing.stdout
    expected = ["exhausted", "dead-2", "agent-2", now.strftime("%Y-%m-%d %H:%M:%SZ"), "#1",
                "agent-0: boom", "#2", "agent-1: bang", "unreadable"]  # fmt: skip
    assert [e for e in expected if e not in out] == [], out


def test_watch_skips_hostile_entries_with_a_warning_and_goes_on(
    redis_server: RedisHandle, redis_client: redis.Redis, fleet: FleetKeys
) -> None:
    redis_client.xadd(fleet.result_stream, {"envelope": b"\xff\xfe"})
    redis_client.xadd(fleet.result_stream, {"envelope": _failed_result("r-1")})
    redis_client.xadd(fleet.result_stream, {"nothing": "here"})
    redis_client.xadd(fleet.result_stream, {"envelope": '{"type": "result", "payload": {}}'})
    redis_client.xadd(fleet.result_stream, {"envelope": _failed_result("[bold]r-2[/]")})
    watched = cli("task", "watch", fleet.fleet, "-n", fleet.namespace, "--since", "0",
                  "--limit", "2", redis_url=redis_server.url)  # fmt: skip
    assert watched.returncode == 0, watched.stderr
    lines = watched.stdout.splitlines()
    assert len(lines) == 2
    assert "failed    (timeout) r-1" in lines[0]
    assert "[bold]r-2[/]" in lines[1], "markup in a task id is shown, not obeyed"
    warnings = [w for w in watched.stderr.splitlines() if w.startswith("warning:")]
    assert len(warnings) == 3
    assert "(1 so far): malformed_json" in warnings[0]
    assert "(2 so far): invalid_envelope: the entry has no `envelope` field" in warnings[1]
    assert "(3 so far): invalid_envelope" in warnings[2]
