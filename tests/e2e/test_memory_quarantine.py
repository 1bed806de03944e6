"""Fleet memory through real rollouts: a canary's memories are its own until its rollout
completes, and a rolled-back canary's are deleted.

Real agent processes (the pod runner) remember and recall through the built-in `remember` and
`recall` handlers, which say which revision answered; the operator settles the quarantine from the
rollout it reconciles. The test fails if a stable agent ever recalls a canary's memory before
promotion, if the promoted memory stays hidden from other revisions, or if an aborted canary's
memory survives.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import redis
import redis.asyncio as aioredis

from harness import Fleets, Kubectl, RedisHandle, start_fleet
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.adapters.fleetmemory import FleetMemory
from newfuse.adapters.redismemory import RedisMemory
from newfuse.adapters.taskclient import TaskClient, TaskSpec
from newfuse.wire.keys import FleetKeys
from newfuse.wire.tasks import ResultPayload
from rollouts import SLOW_PHASED, newfuse_rollout, rollout_of

WHERE = "Where do our orders ship from?"


def run(url: str, ns: str, fleet: str, specs: list[TaskSpec]) -> list[ResultPayload]:
    async def go() -> list[ResultPayload]:
        client = TaskClient.from_url(url, ns, fleet, signing_key=None)
        try:
            ids = [s.task_id async for done in client.submit_many(specs) for s in done]
            return [await client.wait(i, 120) for i in ids]
        finally:
            await client.aclose()

    results = asyncio.run(go())
    assert all(r.status.value == "succeeded" for r in results), [r.error for r in results]
    return results


def remember_until(url: str, keys: FleetKeys, revision: str, text: str) -> str:
    """Have an agent of ``revision`` remember ``text`` (others' copies forgotten); its id."""
    for _ in range(30):
        spec = TaskSpec("remember", {"text": text, "id": uuid.uuid4().hex})
        [result] = run(url, keys.namespace, keys.fleet, [spec])
        memory_id = str(result.output["id"])
        if result.revision == revision:
            return memory_id
        asyncio.run(forget(url, keys, memory_id))
    raise AssertionError(f"no agent of {revision} took a remember task")


def recalls(url: str, keys: FleetKeys, n: int = 24) -> dict[str, list[list[str]]]:
    """Recall WHERE ``n`` times; per answering revision, each answer's memory texts."""
    by_revision: dict[str, list[list[str]]] = {}
    specs = [TaskSpec("recall", {"query": WHERE, "k": 10}) for _ in range(n)]
    for result in run(url, keys.namespace, keys.fleet, specs):
        output: dict[str, Any] = result.output
        texts = [m["text"] for m in output["memories"]]
        by_revision.setdefault(output["revision"], []).append(texts)
    return by_revision


async def forget(url: str, keys: FleetKeys, memory_id: str) -> None:
    """Forget a memory as the fleet's operator would."""
    client = aioredis.Redis.from_url(url, decode_responses=True)
    try:
        await RedisMemory(client, keys).forget([memory_id])
    finally:
        await client.aclose()


def stable_view(url: str, keys: FleetKeys, revision: str) -> list[str]:
    """What an agent of ``revision`` recalls for WHERE, read through the product's path."""

    async def go() -> list[str]:
        client = aioredis.Redis.from_url(url, decode_responses=True)
        try:
            memory = FleetMemory(RedisMemory(client, keys), revision)
            return [r.record.text for r in await memory.recall(WHERE, 10)]
        finally:
            await client.aclose()

    return asyncio.run(go())


def test_a_canarys_memories_are_its_own_until_promoted_and_an_aborted_canarys_are_gone(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
    kubectl: Kubectl,
) -> None:
    ns, url = fleets.namespace, redis_server.url
    body = start_fleet(fleets, pod_runner, redis_client, "memo", 3, rollout=SLOW_PHASED)
    first = body["status"]["updateRevision"]
    keys = FleetKeys(ns, "memo")
    remember_until(url, keys, first, "The support desk answers in English.")

    # Rollout 1: one canary of three; it remembers where orders ship from.
    fleets.patch_spec("memo", image="newfuse/agent:0.2.0")
    wait_for(lambda: rollout_of(fleets, "memo").get("phase") == "Analyzing", 90, what="canary")
    second = rollout_of(fleets, "memo")["canaryRevision"]
    lyon = "Our orders ship from the Lyon warehouse."
    lyon_id = remember_until(url, keys, second, lyon)
    assert redis_client.hget(keys.memory_quarantine, lyon_id) == second
    seen = recalls(url, keys)
    assert seen.get(first), f"no stable agent answered: {list(seen)}"
    assert seen.get(second), f"no canary agent answered: {list(seen)}"
    assert all(lyon not in texts for texts in seen[first]), "a stable agent saw the canary's"
    assert all(lyon in texts for texts in seen[second]), "the canary lost its own memory"

    newfuse_rollout(kubectl, "promote", "memo", "-n", ns, "--full")
    wait_for(lambda: rollout_of(fleets, "memo").get("phase") == "Completed", 120, what="done")
    wait_for(
        lambda: not redis_client.hexists(keys.memory_quarantine, lyon_id),
        30,
        what="the operator lifting the promoted canary's quarantine",
    )
    assert lyon in stable_view(url, keys, first), "promoted, yet hidden from another revision"

    # Rollout 2: its canary remembers something else, then the rollout is aborted.
    fleets.patch_spec("memo", image="newfuse/agent:0.3.0")
    wait_for(
        lambda: (
            rollout_of(fleets, "memo").get("canaryRevision") not in (None, second)
            and rollout_of(fleets, "memo").get("phase") == "Analyzing"
        ),
        90,
        what="the second canary",
    )
    third = rollout_of(fleets, "memo")["canaryRevision"]
    bad = "Our orders ship from the moon."
    bad_id = remember_until(url, keys, third, bad)
    seen = recalls(url, keys)
    assert all(lyon in texts for answers in seen.values() for texts in answers)
    assert all(bad not in texts for texts in seen.get(second, [])), "stable saw the canary's"
    newfuse_rollout(kubectl, "abort", "memo", "-n", ns)
    wait_for(lambda: rollout_of(fleets, "memo").get("phase") == "Aborted", 60, what="aborted")
    wait_for(
        lambda: not redis_client.hexists(keys.memory, bad_id),
        30,
        what="the operator deleting the aborted canary's memory",
    )
    assert redis_client.hlen(keys.memory_quarantine) == 0
    assert bad not in stable_view(url, keys, third), "gone for its own revision too"
    assert redis_client.hlen(keys.memory) == 2  # the first revision's, and the promoted one
