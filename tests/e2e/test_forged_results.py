"""A result nobody in the fleet signed never stands in for the agent's.

Whoever can write the fleet's keys could once store a result for a task id before the task ran:
the index keeps the first result, so the forgery was what `newfuse task submit --wait` printed.
Now the client takes only a result signed with the fleet's key, and the agent that finishes the
task replaces a stored result its fleet did not sign with its own.
"""

from __future__ import annotations

import datetime as dt

import orjson
import pytest
import redis
from kubernetes import client as k8s_client

from clitool import cli
from harness import Fleets, RedisHandle, signing_secret, start_fleet
from localcluster.podrunner import PodRunnerProcess
from newfuse.adapters.streamread import verified_result
from newfuse.wire.envelope import MessageType, encode
from newfuse.wire.keys import FleetKeys
from newfuse.wire.signing import Channel, Signer, Signing

KEY = "forged-results-test-key-0123456789abcdef"


def _forged(keys: FleetKeys, task_id: str, signer: Signer | None) -> bytes:
    now = dt.datetime.now(dt.UTC)
    payload = {
        "task_id": task_id,
        "status": "succeeded",
        "output": "FORGED",
        "agent_id": "honest-0",
        "finished_at": now.isoformat(),
    }
    to = keys.audience(Channel.RESULTS)
    return encode(MessageType.RESULT, payload, "mallory", now=now, audience=to, signer=signer)


@pytest.mark.parametrize(
    "forger", [None, Signer(b"a-key-the-fleet-never-had-0123456789")], ids=["unsigned", "foreign"]
)
def test_a_forged_result_written_first_is_ignored_and_replaced(
    forger: Signer | None,
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
    k8s_api: k8s_client.ApiClient,
) -> None:
    ns = fleets.namespace
    signing = {**signing_secret(k8s_api, ns, KEY), "required": True}
    start_fleet(fleets, pod_runner, redis_client, "honest", 1, signing=signing)
    keys = FleetKeys(ns, "honest")
    redis_client.hset(keys.result_index, "t-1", _forged(keys, "t-1", forger))

    run = cli(
        "task", "submit", "honest", "-n", ns, "--id", "t-1", "--payload", '"REAL"', "--wait",
        "--timeout", "30", redis_url=redis_server.url, env={"NEWFUSE_SIGNING_KEY": KEY},
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    assert '"REAL"' in run.stdout
    assert "FORGED" not in run.stdout
    stored = redis_client.hget(keys.result_index, "t-1")
    assert stored is not None
    keyring = Signing.shared(KEY.encode()).keyring
    result = verified_result(stored, "t-1", keyring, keys.audience(Channel.RESULTS))
    assert (result.output, result.agent_id) == ("REAL", fleets.live_pod_names("honest")[0])
    streamed = [
        orjson.loads(f["envelope"])["payload"] for _, f in redis_client.xrange(keys.result_stream)
    ]
    assert [r["output"] for r in streamed] == ["REAL"], "the forgery never reached the stream"
    assert redis_client.hget(keys.counters, "forgedResults") == "1"
