"""The task promises under work shaped like agent work, with the default task policy.

Model calls take minutes, gateways go down for tens of seconds, fleets sit at zero replicas with a
backlog: each test here is one of those, on the real control plane, with agent processes started
from their pods by the pod runner, against the real Redis, and with no setting shortened unless
its name says so.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, cast

import orjson
import pytest
import redis

import agedbacklog
from harness import Fleets, RedisHandle, agents_of, start_fleet, submit
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.adapters.taskclient import StreamEntries
from newfuse.wire.keys import FleetKeys
from newfuse.wire.scripts import COUNTER_DUPLICATES
from newfuse.wire.taskpolicy import TaskPolicy
from newfuse.wire.tasks import CONSUMER_GROUP, Priority

POLICY = TaskPolicy()
# Polling adds a little to the documented bound: the test samples every 0.5 s.
SAMPLING_SLACK = 2.0


def results(client: redis.Redis, keys: FleetKeys) -> dict[str, dict[str, Any]]:
    raw = cast(dict[str, str], client.hgetall(keys.result_index))
    return {task_id: orjson.loads(env)["payload"] for task_id, env in raw.items()}


def owners(client: redis.Redis, keys: FleetKeys) -> dict[str, tuple[str, str, int]]:
    """task id -> (entry id, consumer, times delivered) of every pending entry."""
    stream = keys.tasks(Priority.NORMAL)
    pending = client.xpending_range(stream, CONSUMER_GROUP, min="-", max="+", count=1000)
    by_entry = {str(p["message_id"]): p for p in pending}
    out = {}
    for entry_id, fields in cast(StreamEntries, client.xrange(stream)):
        if entry_id in by_entry:
            p = by_entry[entry_id]
            out[fields["task_id"]] = (entry_id, str(p["consumer"]), int(p["times_delivered"]))
    return out


def owned(client: redis.Redis, keys: FleetKeys, task_id: str) -> tuple[str, str, int] | None:
    return owners(client, keys).get(task_id)


@pytest.mark.timeout(1200)  # minutes of real time: the point of the test
def test_a_long_task_runs_once_and_a_lost_one_runs_once_more(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
) -> None:
    """150 s tasks on 3 agents: a live worker keeps its task; a SIGKILLed one loses it once."""
    ns = fleets.namespace
    start_fleet(fleets, pod_runner, redis_client, "thinkers", 3, fast=False)
    keys = FleetKeys(ns, "thinkers")
    long_task = ("--handler", "sleep", "--payload", '{"seconds": 150}', "--task-timeout", "200")
    submit("thinkers", ns, redis_server.url, "--id", "long-0", *long_task)
    first = wait_for(partial(owned, redis_client, keys, "long-0"), 30, what="long-0 taken")
    keeper = first[1].split(":")[0]
    # More long tasks until one lands on another agent: that agent will be killed.
    victim_task = None
    for n in range(1, 8):
        submit("thinkers", ns, redis_server.url, "--id", f"long-{n}", *long_task)
        taken = wait_for(partial(owned, redis_client, keys, f"long-{n}"), 30, what="taken")
        if taken[1].split(":")[0] != keeper:
            victim_task = f"long-{n}"
            break
    assert victim_task is not None, "no long task landed on a second agent"
    _, victim_consumer, _ = owners(redis_client, keys)[victim_task]
    victim_pod = victim_consumer.split(":")[0]
    [victim] = [a for a in agents_of(pod_runner, ns) if a.pod == victim_pod]
    os.kill(victim.pid, signal.SIGKILL)
    killed_at = time.monotonic()
    held_by_victim = {
        t for t, (_, c, _) in owners(redis_client, keys).items() if c == victim_consumer
    }

    def keeper_still_owns_long_0() -> bool:
        state = owners(redis_client, keys).get("long-0")
        if state is not None:
            assert state[1] == first[1], f"long-0 changed hands: {state} (was {first})"
            assert state[2] == 1, f"long-0 was delivered again: {state}"
        return True

    def reclaimed() -> bool:
        keeper_still_owns_long_0()
        now = owners(redis_client, keys)
        return all(t in now and now[t][1] != victim_consumer for t in held_by_victim)

    wait_for(
        reclaimed, POLICY.claim_bound_seconds + 30, interval=0.5, what="victim's tasks reclaimed"
    )
    reclaim_seconds = time.monotonic() - killed_at
    print(f"SIGKILLed agent's {len(held_by_victim)} task(s) reclaimed after {reclaim_seconds:.1f}s")
    assert reclaim_seconds <= POLICY.claim_bound_seconds + SAMPLING_SLACK
    assert owners(redis_client, keys)[victim_task][2] == 2, "one more delivery, counted"

    all_ids = {"long-0", *(f"long-{n}" for n in range(1, 8))} & (
        set(results(redis_client, keys)) | set(owners(redis_client, keys))
    )

    def finished() -> bool:
        keeper_still_owns_long_0()
        return set(results(redis_client, keys)) >= all_ids

    wait_for(finished, 420, interval=1.0, what="every long task finished")
    done = results(redis_client, keys)
    assert {done[t]["status"] for t in all_ids} == {"succeeded"}
    assert done["long-0"]["attempts"] == 1
    assert done["long-0"]["agent_id"] == keeper
    assert done[victim_task]["attempts"] == 2, "the lost delivery counts as an attempt"
    assert int(redis_client.hget(keys.counters, COUNTER_DUPLICATES) or 0) == 0


class OutageGateway:
    """A chat-completions stub on 127.0.0.1: 503 until ``outage`` seconds have passed, then 200."""

    def __init__(self, outage: float) -> None:
        self.started = time.monotonic()
        self.outage = outage
        self.hits: list[tuple[float, int]] = []
        gateway = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                self.rfile.read(length)
                elapsed = time.monotonic() - gateway.started
                status = 503 if elapsed < gateway.outage else 200
                gateway.hits.append((elapsed, status))
                body = orjson.dumps(
                    {"error": "overloaded"}
                    if status == 503
                    else {
                        "model": "m",
                        "choices": [{"message": {"role": "assistant", "content": "ok"}}],
                    }
                )
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"


@pytest.fixture
def outage_gateway() -> Iterator[OutageGateway]:
    stub = OutageGateway(outage=30.0)
    stub.thread.start()
    yield stub
    stub.server.shutdown()
    stub.server.server_close()


@pytest.mark.timeout(1200)  # minutes of real time: the point of the test
def test_backoff_rides_out_a_gateway_outage(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
    outage_gateway: OutageGateway,
) -> None:
    """50 chat tasks submitted while the gateway answers 503 for 30 s: backoff carries them."""
    ns = fleets.namespace
    start_fleet(
        fleets, pod_runner, redis_client, "chatters", 3, fast=False,
        gateway={"endpoint": outage_gateway.endpoint, "model": "m"},
    )  # fmt: skip
    keys = FleetKeys(ns, "chatters")
    outage_gateway.started = time.monotonic()  # the outage starts now
    submit(
        "chatters", ns, redis_server.url, "--handler", "chat", "--payload", '"hi"', "--count", "50"
    )
    assert time.monotonic() - outage_gateway.started < 30, "all 50 submitted during the outage"
    wait_for(
        lambda: redis_client.hlen(keys.result_index) >= 50, 600, interval=1.0, what="50 results"
    )
    done = results(redis_client, keys)
    succeeded = sum(r["status"] == "succeeded" for r in done.values())
    retried = [r for r in done.values() if r["history"]]
    delays = [h["retry_in_seconds"] for r in retried for h in r["history"]]
    attempt_times = {h["at"] for r in retried for h in r["history"]}
    print(
        f"{succeeded}/50 succeeded; {len(retried)} retried; retry delays "
        f"{min(delays):.1f}-{max(delays):.1f}s; gateway hits {len(outage_gateway.hits)} "
        f"({sum(s == 503 for _, s in outage_gateway.hits)} during the outage)"
    )
    assert succeeded >= 48, f"only {succeeded} of 50 succeeded"
    assert retried, "the outage made tasks retry"
    assert min(delays) >= POLICY.retry_base_seconds / 2, "no retry sooner than half the base"
    # Spread out: the retries of the outage's tasks were not all due in the same second.
    assert len({round(d) for d in delays}) >= 5, f"retry delays not spread: {sorted(delays)}"
    assert len(attempt_times) > len(retried) / 2, "attempt times are recorded in the results"


@pytest.mark.timeout(1200)  # minutes of real time: the point of the test
def test_a_backlog_loses_nothing(
    aged_backlog: agedbacklog.AgedBacklog, redis_client: redis.Redis
) -> None:
    """A signed fleet at 0 replicas for 10 minutes with 20 tasks queued runs all 20 afterwards.

    The backlog was queued when the e2e tests started (tests/agedbacklog.py): it aged while they
    ran, through their Redis and operator restarts.
    """
    backlog, keys = aged_backlog, aged_backlog.keys
    age = backlog.wait_until_aged()
    print(f"backlog age: {age:.0f}s")
    assert redis_client.hlen(keys.result_index) == 0, "nothing ran while at zero"
    backlog.fleets.patch_spec(agedbacklog.FLEET, replicas=2)
    wait_for(lambda: redis_client.hlen(keys.result_index) >= 21, 120, what="21 results")
    done = results(redis_client, keys)
    late = done.pop("too-late")
    assert (late["status"], late["reason"]) == ("failed", "deadline")
    assert len(done) == agedbacklog.TASKS
    assert {r["status"] for r in done.values()} == {"succeeded"}, "a 10-minute backlog is not stale"
    assert {r["output"] for r in done.values()} == {"queued"}
