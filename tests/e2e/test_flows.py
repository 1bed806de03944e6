"""Workflows and sagas on the operator's fleets, with the operator and agents SIGKILLed mid-flow.

Everything goes through `newfuse workflow` and `newfuse tx` as a user runs them; the fleets run
the default task settings, so a killed agent's work is taken over after the default claim bound.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from harness import (
    NEWFUSE_CLI,
    Fleets,
    OperatorProcess,
    RedisHandle,
    agents_of,
    start_fleet,
    wait_results,
)
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.wire.keys import FleetKeys
from newfuse.wire.scripts import COUNTER_DUPLICATES
from newfuse.wire.tasks import ResultPayload

pytestmark = pytest.mark.usefixtures("operator")
HANDLERS = ["echo", "sleep", "reduce", "workflow", "saga"]


def _cli(url: str, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NEWFUSE_REDIS_URL": url, "NO_COLOR": "1", "COLUMNS": "200"}
    return subprocess.run(
        [NEWFUSE_CLI, *args], capture_output=True, text=True, timeout=300, check=False, env=env
    )


def _result(url: str, ns: str, fleet: str, task_id: str, timeout: float) -> ResultPayload:
    [found] = wait_results(url, ns, fleet, [task_id], timeout)
    return found


def _kill_one_agent(runner: PodRunnerProcess, ns: str, fleet: str) -> str:
    pods = [a for a in agents_of(runner, ns) if a.pod.startswith(f"{fleet}-")]
    victim = random.choice(pods)  # noqa: S311 - a random victim, not security
    os.kill(victim.pid, signal.SIGKILL)
    return victim.pod


def test_a_50_task_dag_completes_once_though_the_operator_and_agents_are_killed(
    fleets: Fleets, pod_runner: PodRunnerProcess, redis_client: redis.Redis,
    redis_server: RedisHandle, operator: OperatorProcess, tmp_path: Path,
) -> None:  # fmt: skip
    ns, url = fleets.namespace, redis_server.url
    for name in ("wf-a", "wf-b", "wf-c"):
        start_fleet(fleets, pod_runner, redis_client, name, 2, fast=False, capabilities=HANDLERS)
    leaves = [
        {"id": f"leaf-{i}", "fleet": "wf-a" if i % 2 else "wf-b", "handler": "sleep",
         "input": {"seconds": 3, "n": i}}
        for i in range(48)
    ]  # fmt: skip
    total = {"id": "total", "fleet": "wf-c", "handler": "reduce",
             "input": {"op": "sum", "field": "n"}, "needs": [x["id"] for x in leaves]}  # fmt: skip
    report = {"id": "report", "fleet": "wf-a", "handler": "echo", "input": "ok", "needs": ["total"]}
    cyclic = tmp_path / "cyclic.yaml"
    cyclic.write_text(yaml.safe_dump({"tasks": [{**report, "needs": ["total"]},
                                                {**total, "needs": ["report"]}]}))  # fmt: skip
    refused = _cli(url, "workflow", "submit", "wf-c", "-n", ns, "-f", str(cyclic))
    assert refused.returncode == 1
    assert "a cycle: " in refused.stderr, refused.stderr

    flow = tmp_path / "flow.yaml"
    flow.write_text(yaml.safe_dump({"id": "wf-50", "tasks": [*leaves, total, report],
                                    "result": "total"}))  # fmt: skip
    sent = _cli(url, "workflow", "submit", "wf-c", "-n", ns, "-f", str(flow))
    assert sent.returncode == 0, sent.stderr
    wait_for(lambda: _started(redis_client, ns, 8), 60, what="leaves running")
    operator.kill(signal.SIGKILL)
    killed = [_kill_one_agent(pod_runner, ns, f) for f in ("wf-a", "wf-b", "wf-c")]
    operator.start()
    print(f"SIGKILLed the operator and {', '.join(killed)} mid-workflow")

    result = _result(url, ns, "wf-c", "wf-50", 240)
    assert result.status.value == "succeeded", result.error
    assert result.output == {"tasks": 50, "failed": [], "output": sum(range(48))}
    status = _cli(url, "workflow", "status", "wf-c", "wf-50", "-n", ns)
    assert status.returncode == 0, status.stderr
    assert "workflow wf-50: succeeded" in status.stdout
    assert status.stdout.count("succeeded") == 51, status.stdout
    for name in ("wf-a", "wf-b", "wf-c"):
        keys = FleetKeys(ns, name)
        assert int(redis_client.hget(keys.counters, COUNTER_DUPLICATES) or 0) == 0
    stored = sum(
        redis_client.xlen(FleetKeys(ns, f).result_stream) for f in ("wf-a", "wf-b", "wf-c")
    )
    assert stored == 51, "one result per task (50) and the workflow's own"
    # Only what a killed agent held when it died ran again: each of the two killed leaf agents
    # held at most its concurrency (4, the default) of leaves.
    reruns = [
        leaf["id"]
        for fleet in ("wf-a", "wf-b")
        for leaf, done in zip(
            [x for x in leaves if x["fleet"] == fleet],
            wait_results(
                url, ns, fleet, [f"wf-50.{x['id']}" for x in leaves if x["fleet"] == fleet], 5
            ),
            strict=True,
        )
        if done.attempts > 1
    ]
    assert len(reruns) <= 8, reruns
    print(f"{len(reruns)} leaf task(s) ran again after their agent was killed: {reruns}")


def _started(client: redis.Redis, ns: str, n: int) -> bool:
    done = sum(int(client.hget(FleetKeys(ns, f).counters, "tasksCompleted") or 0)
               for f in ("wf-a", "wf-b"))  # fmt: skip
    return done >= n


def _saga(ops: list[dict[str, Any]]) -> dict[str, Any]:
    return {"operations": ops}


def test_a_saga_rolls_back_once_in_reverse_though_its_coordinator_is_killed(
    fleets: Fleets, pod_runner: PodRunnerProcess, redis_client: redis.Redis,
    redis_server: RedisHandle, tmp_path: Path,
) -> None:  # fmt: skip
    ns, url = fleets.namespace, redis_server.url
    start_fleet(fleets, pod_runner, redis_client, "bank", 2, fast=False, capabilities=HANDLERS)
    start_fleet(fleets, pod_runner, redis_client, "ledger", 1, fast=False, capabilities=HANDLERS)
    slow_undo: dict[str, Any] = {"handler": "sleep", "input": {"seconds": 4}}
    ops: list[dict[str, Any]] = [
        {"id": f"op{i}", "fleet": "bank", "handler": "echo", "input": i, "compensate": slow_undo}
        for i in (1, 2)
    ]
    ops.append({"id": "op3", "fleet": "bank", "handler": "sleep", "input": {"seconds": -1}})
    ops.append({"id": "op4", "fleet": "bank", "handler": "echo", "input": 4,
                "compensate": slow_undo})  # fmt: skip
    path = tmp_path / "tx.yaml"
    path.write_text(yaml.safe_dump({"id": "tx-1", **_saga(ops)}))
    sent = _cli(url, "tx", "submit", "ledger", "-n", ns, "-f", str(path))
    assert sent.returncode == 0, sent.stderr
    undo = FleetKeys(ns, "bank")
    # The rollback has begun (op2's compensation is queued or running): kill the coordinator.
    wait_for(lambda: bool(redis_client.hexists(undo.task_index, "tx-1.undo.op2")), 60,
             what="the rollback to begin")  # fmt: skip
    [coordinator] = [a for a in agents_of(pod_runner, ns) if a.pod.startswith("ledger-")]
    os.kill(coordinator.pid, signal.SIGKILL)

    result = _result(url, ns, "ledger", "tx-1", 180)
    assert result.output is not None
    assert result.output["status"] == "rolled_back"
    states = [op["state"] for op in result.output["operations"]]
    assert states == ["compensated", "compensated", "failed", "pending"]
    first = _result(url, ns, "bank", "tx-1.undo.op2", 5)
    second = _result(url, ns, "bank", "tx-1.undo.op1", 5)
    assert first.finished_at < second.finished_at, "compensations run last first"
    assert redis_client.hget(undo.result_index, "tx-1.undo.op4") is None, "op4 never ran"
    assert redis_client.hget(undo.result_index, "tx-1.op.op4") is None
    assert int(redis_client.hget(undo.counters, COUNTER_DUPLICATES) or 0) == 0
    status = _cli(url, "tx", "status", "ledger", "tx-1", "-n", ns)
    assert "transaction tx-1: rolled_back" in status.stdout, status.stdout

    committed = tmp_path / "ok.yaml"
    ok_ops = [{**op, "handler": "echo", "input": 3} if op["id"] == "op3" else op for op in ops]
    committed.write_text(yaml.safe_dump({"id": "tx-2", **_saga(ok_ops)}))
    done = _cli(url, "tx", "submit", "ledger", "-n", ns, "-f", str(committed), "--wait", "120")
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout[done.stdout.index("{") :])["status"] == "committed"


def test_an_aborted_transaction_rolls_back_what_it_did(
    fleets: Fleets, pod_runner: PodRunnerProcess, redis_client: redis.Redis,
    redis_server: RedisHandle, tmp_path: Path,
) -> None:  # fmt: skip
    ns, url = fleets.namespace, redis_server.url
    start_fleet(fleets, pod_runner, redis_client, "shop", 1, capabilities=HANDLERS)
    undo = {"handler": "echo", "input": "refund"}
    ops: list[dict[str, Any]] = [
        {"id": "pay", "fleet": "shop", "handler": "echo", "input": 1, "compensate": undo},
        {"id": "wait", "fleet": "shop", "handler": "sleep", "input": {"seconds": 30}},
        {"id": "ship", "fleet": "shop", "handler": "echo", "input": 3},
    ]
    path = tmp_path / "tx.yaml"
    path.write_text(yaml.safe_dump({"id": "tx-abort", **_saga(ops)}))
    assert _cli(url, "tx", "submit", "shop", "-n", ns, "-f", str(path)).returncode == 0
    keys = FleetKeys(ns, "shop")
    wait_for(lambda: bool(redis_client.hexists(keys.task_index, "tx-abort.op.wait")), 60,
             what="the second operation to start")  # fmt: skip
    aborted = _cli(url, "tx", "abort", "shop", "tx-abort", "-n", ns)
    assert aborted.returncode == 0, aborted.stderr
    result = _result(url, ns, "shop", "tx-abort", 60)
    assert result.output is not None
    assert result.output["status"] == "rolled_back"
    assert [op["state"] for op in result.output["operations"]] == [
        "compensated", "failed", "pending",
    ]  # fmt: skip
    shipped = _result(url, ns, "shop", "tx-abort.op.ship", 5)
    assert shipped.reason == "canceled", "the unstarted operation never runs"
