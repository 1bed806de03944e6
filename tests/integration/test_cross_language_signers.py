"""Tasks signed in Node.js and in Go run on a real agent that requires signatures.

The must-show of issue 12: a client that follows the documented canonical form, in another
language, signs a task that a strict agent (NEWFUSE_REQUIRE_SIGNATURES=true, the fleet's shared
HMAC key) runs, storing a signed result. A copy with one changed byte is dead-lettered as
`bad_signature` beside them, so the test would fail against an agent that checked nothing.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from functools import partial

import orjson
import pytest
import redis

from agentproc import AgentProcess
from crosssign import LANGUAGES, sign_task
from harness import RedisHandle
from localcluster import wait_for
from newfuse.wire.envelope import decode
from newfuse.wire.keys import FleetKeys
from newfuse.wire.signing import Channel, Keyring, Signer
from newfuse.wire.tasks import Priority

KEY = "cross-language-signing-key-of-32-bytes-or-more"
INPUT = {"text": "hello wörld 😀", "n": [1.5, 1e21, 7], "ok": True}


@pytest.fixture
def keys(redis_client: redis.Redis) -> Iterator[FleetKeys]:
    fleet = FleetKeys("xlang", f"f{uuid.uuid4().hex[:8]}")
    yield fleet
    redis_client.delete(*fleet.all_keys())


def stored(client: redis.Redis, keys: FleetKeys, task_id: str) -> str | None:
    raw = client.hget(keys.result_index, task_id)
    return str(raw) if raw else None


def test_tasks_signed_in_node_and_go_run_on_a_strict_agent(
    redis_server: RedisHandle, redis_client: redis.Redis, keys: FleetKeys
) -> None:
    # Sign first (building the Go signer may take a while when its cache is cold).
    signed = {
        f"{language}-1": sign_task(
            language,
            keys.namespace,
            keys.fleet,
            KEY.encode(),
            f"{language}-1",
            orjson.dumps(INPUT).decode(),
        )
        for language in LANGUAGES
    }
    forged = sign_task(
        "node", keys.namespace, keys.fleet, KEY.encode(), "forged", orjson.dumps(INPUT).decode()
    ).replace(b"hello", b"hellp")
    env = {"NEWFUSE_SIGNING_KEY": KEY, "NEWFUSE_REQUIRE_SIGNATURES": "true"}
    agent = AgentProcess(redis_server.url, keys.namespace, keys.fleet, env=env).start()
    try:
        stream = keys.tasks(Priority.NORMAL)
        for task_id, raw in [*signed.items(), ("forged", forged)]:
            redis_client.xadd(stream, {"task_id": task_id, "envelope": raw})
        keyring = Keyring.of([Signer(KEY.encode())])
        for task_id in signed:
            raw_result = wait_for(partial(stored, redis_client, keys, task_id), 30, what=task_id)
            # The agent's result is signed for the fleet's results channel, and verifies.
            result = decode(
                raw_result,
                keyring=keyring,
                audience=keys.audience(Channel.RESULTS),
                require_signature=True,
                now=dt.datetime.now(dt.UTC),
            )
            assert (result.payload["status"], result.payload["output"]) == ("succeeded", INPUT)
        letters = wait_for(lambda: redis_client.xrange(keys.dead_letters), 30, what="the forgery")
        assert [(f.get("task_id"), f["reason"]) for _, f in letters] == [
            ("forged", "bad_signature")
        ]
        assert stored(redis_client, keys, "forged") is None
        assert agent.alive, agent.output()
    finally:
        code = agent.stop()
    assert code == 0, f"the agent's drain failed: {agent.output()}"
