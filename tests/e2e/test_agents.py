"""Agents really working: operator -> pods -> pod runner -> agent processes -> Redis -> results.

The pod runner stands in for the kubelet (kwok runs no processes), so every agent here is a real
`python -m newfuse_agent` process started from its pod's spec.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any, cast

import orjson
import redis
from kubernetes import client as k8s_client

from harness import (
    Fleets,
    OperatorProcess,
    RedisHandle,
    agent_state,
    agents_of,
    metric_value,
    start_fleet,
    submit,
)
from localcluster import wait_for
from localcluster.podrunner import AgentEntry, PodRunnerProcess
from newfuse.adapters.taskclient import StreamEntries
from newfuse.wire.keys import FleetKeys
from newfuse.wire.state import AgentStatus
from newfuse.wire.tasks import CONSUMER_GROUP, Priority

REPO = Path(__file__).resolve().parents[2]
NEWFUSE = str(Path(sys.executable).with_name("newfuse"))


def result_ids(client: redis.Redis, keys: FleetKeys) -> list[str]:
    entries = cast(StreamEntries, client.xrange(keys.result_stream))
    return [fields["task_id"] for _, fields in entries]


def _payload(raw: str | bytes) -> dict[str, Any]:
    payload: dict[str, Any] = orjson.loads(raw)["payload"]
    return payload


def inflight(entry: AgentEntry) -> float:
    try:
        with urllib.request.urlopen(
            f"http://127.0.0.1:{entry.http_port}/metrics", timeout=2
        ) as resp:
            text = resp.read().decode()
    except OSError:
        return 0.0
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("newfuse_agent_tasks_inflight")
    )


def test_three_agents_complete_1000_tasks_exactly_once_and_status_counts_them(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
) -> None:
    ns = fleets.namespace
    start_fleet(fleets, pod_runner, redis_client, "workers", 3)
    out = submit("workers", ns, redis_server.url, "--count", "1000", "--payload", '{"n": 1}')
    assert "submitted 1000 task(s)" in out
    keys = FleetKeys(ns, "workers")
    wait_for(lambda: redis_client.hlen(keys.result_index) >= 1000, 120, what="1000 results")
    ids = result_ids(redis_client, keys)
    assert len(ids) == 1000
    assert len(set(ids)) == 1000, "no task has two results"
    workers = {
        fields["agent_id"] for fields in map(_payload, redis_client.hvals(keys.result_index))
    }
    assert len(workers) == 3, f"all three agents took a share: {workers}"

    def counted() -> bool:
        metrics = fleets.get("workers")["status"].get("metrics") or {}
        return bool(metrics.get("tasksCompleted") == 1000 and metrics.get("reportingAgents") == 3)

    wait_for(counted, 60, what="status.metrics.tasksCompleted == 1000")
    for entry in agents_of(pod_runner, ns):
        for path in ("/healthz", "/readyz"):
            url = f"http://127.0.0.1:{entry.http_port}{path}"
            with urllib.request.urlopen(url, timeout=5) as resp:
                assert resp.status == 200, (entry.pod, path)
    single = submit(
        "workers", ns, redis_server.url, "--payload", '"hello"', "--wait", "--timeout", "30"
    )
    assert '"output": "hello"' in single
    assert '"status": "succeeded"' in single


def test_sigkilled_agents_in_flight_tasks_are_reclaimed_and_completed_once(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
) -> None:
    ns = fleets.namespace
    start_fleet(fleets, pod_runner, redis_client, "crashers", 3)
    keys = FleetKeys(ns, "crashers")
    submit(
        "crashers",
        ns,
        redis_server.url,
        "--count",
        "40",
        "--handler",
        "sleep",
        "--payload",
        '{"seconds": 0.5}',
    )
    victim = wait_for(
        lambda: next((a for a in agents_of(pod_runner, ns) if inflight(a) >= 2), None),
        30,
        what="a busy agent",
    )
    stream = keys.tasks(Priority.NORMAL)
    os.kill(victim.pid, signal.SIGKILL)
    held = [
        p["message_id"]
        for p in redis_client.xpending_range(stream, CONSUMER_GROUP, min="-", max="+", count=1000)
        if str(p["consumer"]).startswith(f"{victim.pod}:")
    ]
    assert held, "the killed agent held tasks"
    held_tasks = {
        fields["task_id"]
        for entry_id, fields in redis_client.xrange(stream)
        if entry_id in set(held)
    }
    wait_for(lambda: redis_client.hlen(keys.result_index) >= 40, 90, what="all 40 results")
    ids = result_ids(redis_client, keys)
    assert len(ids) == len(set(ids)) == 40, "none lost, none completed twice"
    assert held_tasks <= set(ids)
    assert redis_client.xpending(stream, CONSUMER_GROUP)["pending"] == 0


def test_scale_down_drains_the_agent_which_finishes_its_work_and_goes_inactive(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
) -> None:
    ns = fleets.namespace
    body = start_fleet(fleets, pod_runner, redis_client, "drainers", 3)
    keys = FleetKeys(ns, "drainers")
    leaving = f"drainers-{body['status']['updateRevision']}-2"
    submit(
        "drainers",
        ns,
        redis_server.url,
        "--count",
        "24",
        "--handler",
        "sleep",
        "--payload",
        '{"seconds": 1.5}',
    )
    entry = wait_for(
        lambda: next(
            (a for a in agents_of(pod_runner, ns) if a.pod == leaving and inflight(a) >= 1), None
        ),
        30,
        what="the highest-ordinal agent busy",
    )
    fleets.patch_spec("drainers", replicas=2)

    def gone_inactive() -> bool:
        state = agent_state(redis_client, keys, leaving)
        return state is not None and state.state.status is AgentStatus.INACTIVE

    wait_for(gone_inactive, 60, what=f"{leaving} inactive")
    wait_for(lambda: not Path(f"/proc/{entry.pid}").exists(), 30, what="the drained process exited")
    wait_for(lambda: redis_client.hlen(keys.result_index) >= 24, 90, what="all 24 results")
    ids = result_ids(redis_client, keys)
    assert len(ids) == len(set(ids)) == 24
    finished_by_leaver = [
        r for r in map(_payload, redis_client.hvals(keys.result_index)) if r["agent_id"] == leaving
    ]
    assert finished_by_leaver, "the draining agent finished the work it held"


def test_a_signing_fleet_runs_signed_tasks_and_dead_letters_unsigned_ones(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
    k8s_api: k8s_client.ApiClient,
    operator: OperatorProcess,
) -> None:
    """The key reaches agents only through a Secret; unsigned work is refused, never run."""
    ns, key = fleets.namespace, "e2e-signing-key-0123456789abcdef"
    k8s_client.CoreV1Api(k8s_api).create_namespaced_secret(
        ns,
        k8s_client.V1Secret(
            metadata=k8s_client.V1ObjectMeta(name="signing"), string_data={"key": key}
        ),
    )
    start_fleet(
        fleets, pod_runner, redis_client, "signed", 1,
        signing={"keySecretRef": {"name": "signing", "key": "key"}},
    )  # fmt: skip
    [pod] = fleets.pods("signed")
    env = {e.name: e for e in pod.spec.containers[0].env}
    assert env["NEWFUSE_SIGNING_KEY"].value is None, "never a plain value in the pod spec"
    assert env["NEWFUSE_SIGNING_KEY"].value_from.secret_key_ref.name == "signing"
    assert env["NEWFUSE_REQUIRE_SIGNATURES"].value == "true"

    keys = FleetKeys(ns, "signed")
    unsigned = submit("signed", ns, redis_server.url, "--id", "unsigned-1", "--payload", "1")
    assert "submitted" in unsigned
    wait_for(
        lambda: redis_client.xlen(keys.dead_letters) >= 1, 30, what="the unsigned task's DLQ entry"
    )
    [(_, letter)] = cast(StreamEntries, redis_client.xrange(keys.dead_letters))
    assert letter["reason"] == "unsigned"
    # The operator exports the DLQ depth per fleet (what the DeadLettersGrowing alert watches).
    series = f'newfuse_dead_letters{{fleet="signed",namespace="{ns}"}}'
    wait_for(lambda: metric_value(operator.metrics(), series) == 1.0, 30, what=series)

    signed = subprocess.run(
        [NEWFUSE, "task", "submit", "signed", "-n", ns, "--id", "signed-1", "--payload", "2",
         "--wait", "--timeout", "30"],
        capture_output=True, text=True, timeout=60, check=False,
        env={**os.environ, "NEWFUSE_REDIS_URL": redis_server.url, "NEWFUSE_SIGNING_KEY": key,
             "NO_COLOR": "1"},
    )  # fmt: skip
    assert signed.returncode == 0, signed.stderr
    assert '"status": "succeeded"' in signed.stdout
    results = {r["task_id"]: r for r in map(_payload, redis_client.hvals(keys.result_index))}
    assert results["signed-1"]["status"] == "succeeded"
    # The unsigned one never ran; its client got a FAILED result at once, with the reason.
    assert (results["unsigned-1"]["status"], results["unsigned-1"]["reason"]) == (
        "failed",
        "unsigned",
    )
