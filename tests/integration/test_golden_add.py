"""`newfuse golden add --from-review`: an approved answer lands in the gate's ConfigMap, once.

A real agent parks a task for review (tests/runtime_fleet.py), a person approves an edit of it,
and the installed CLI writes the case into a ConfigMap of the real API server, where the golden
gate reads it (newfuse.core.golden parses it back here).
"""

from __future__ import annotations

import datetime as dt
import subprocess
from typing import Any

from kubernetes import client as k8s_client

from clitool import cli
from harness import Cluster, RedisHandle
from newfuse.adapters.redis_store import RedisStore
from newfuse.adapters.reviews import ReviewStore
from newfuse.adapters.taskclient import TaskSpec
from newfuse.core.golden import parse_cases
from newfuse.wire.review import ReviewDecision, ReviewPolicy, Verdict
from newfuse.wire.state import AgentState, AgentStatus, StateUpdate
from runtime_fleet import Fleet, eventually, with_fleet

REVIEWED = ReviewPolicy(handlers=("echo",), timeout_seconds=3600)


def _decision(verdict: Verdict, **fields: Any) -> ReviewDecision:
    return ReviewDecision(
        verdict=verdict, reviewer="alice", decided_at=dt.datetime.now(dt.UTC), **fields
    )


async def _two_reviews(fleet: Fleet) -> list[Any]:
    store = ReviewStore(fleet.redis, fleet.client.keys)
    found: list[Any] = []

    async def both() -> bool:
        found[:] = await store.open_reviews()
        return len(found) == 2

    await eventually(both, 20, "two open reviews")
    return sorted(found, key=lambda r: str(r.request.input))


async def _mirror(fleet: Fleet) -> None:
    """The fleet's state, as the operator mirrors it (the CLI looks for it on Redis)."""
    operator = RedisStore(fleet.url)
    state = AgentState(id=fleet.name, status=AgentStatus.ACTIVE)
    now = dt.datetime.now(dt.UTC)
    update = StateUpdate(agent_id=fleet.name, state=state, version=1, timestamp=now)
    await operator.put_fleet_state(fleet.client.keys, update)
    await operator.close()


def test_an_approved_answer_becomes_a_golden_case_and_a_rejected_one_does_not(
    cluster: Cluster, namespace: str, redis_server: RedisHandle, k8s_api: k8s_client.ApiClient
) -> None:
    env = {"KUBECONFIG": str(cluster.kubeconfig)}
    out: dict[str, subprocess.CompletedProcess[str]] = {}

    async def body(fleet: Fleet) -> None:
        store = ReviewStore(fleet.redis, fleet.client.keys)
        await _mirror(fleet)
        async with fleet.agent("solo", review=REVIEWED):
            await fleet.client.submit(TaskSpec("echo", {"q": "capital of France?"}))
            await fleet.client.submit(TaskSpec("echo", {"q": "capital of Mars?"}))
            approved, rejected = await _two_reviews(fleet)
            edit = _decision(Verdict.APPROVE, answer={"a": "Paris"}, edited=True)
            await store.decide(approved.request.id, edit)
            await store.decide(rejected.request.id, _decision(Verdict.REJECT, comment="no"))
        base = ("golden", "add", fleet.name, "-n", namespace, "--config-map", "golden")
        for label, review, name in (
            ("added", approved, "capital"),
            ("again", approved, "capital"),
            ("rejected", rejected, "mars"),
            ("unknown", None, "x"),
        ):
            rid = review.request.id if review is not None else "no-such-review"
            out[label] = cli(
                *base, "--from-review", rid, "--name", name, redis_url=fleet.url, env=env
            )

    with_fleet(redis_server.url, body, namespace=namespace)
    assert out["added"].returncode == 0, out["added"].stderr
    assert "added golden case 'capital'" in out["added"].stdout
    found = k8s_client.CoreV1Api(k8s_api).read_namespaced_config_map("golden", namespace)
    [case] = parse_cases(found.data["cases.yaml"], "test")
    assert (case.name, case.handler, case.input) == ("capital", "echo", {"q": "capital of France?"})
    assert (case.expect.scorer, case.expect.exact) == ("exact", {"a": "Paris"}), "the edit"
    assert out["again"].returncode == 1
    assert "a case named 'capital' exists" in out["again"].stderr
    assert out["rejected"].returncode == 1
    assert "is reject: only an output a person approved" in out["rejected"].stderr
    assert out["unknown"].returncode == 1
    assert "Traceback" not in out["unknown"].stderr
