"""Shadow tasks end to end: live traffic, the operator's fleets, default gate settings.

During the rollout a share of the stable revision's live tasks is copied to the canary, whose
answers (upper-cased by NEWFUSE_ECHO_CASE=upper: wrong, without an error) are stored apart. Every
caller of a shadowed task gets the stable agent's answer, and the disagreement rolls back.
"""

from __future__ import annotations

import asyncio

import redis

from harness import FAST_AGENT_ENV, Fleets, RedisHandle, start_fleet
from localcluster.podrunner import PodRunnerProcess
from newfuse.adapters.taskclient import TaskClient
from newfuse.wire.keys import FleetKeys
from newfuse.wire.shadow import ShadowCase
from newfuse.wire.tasks import ResultPayload
from rollouts import Traffic, every_task_accounted_for, rolled_back_to

SHADOWED = {"strategy": "Phased", "analysis": {"shadow": {}}}  # 10%, 20 copies, 90% agreement
WRONG_ANSWERS = [*FAST_AGENT_ENV, {"name": "NEWFUSE_ECHO_CASE", "value": "upper"}]


async def _results(url: str, ns: str, fleet: str, ids: list[str]) -> dict[str, ResultPayload]:
    client = TaskClient.from_url(url, ns, fleet, signing_key=None)
    try:
        found = {task_id: await client.result(task_id) for task_id in ids}
    finally:
        await client.aclose()
    return {k: v for k, v in found.items() if v is not None}


def test_shadowed_tasks_answer_callers_from_stable_and_disagreement_rolls_back(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
) -> None:
    ns = fleets.namespace
    keys = FleetKeys(ns, "shadowed")
    body = start_fleet(
        fleets, pod_runner, redis_client, "shadowed", 2, fast=False, rollout=SHADOWED
    )
    stable = body["status"]["updateRevision"]

    with Traffic(redis_server.url, ns, "shadowed") as traffic:
        fleets.patch_spec("shadowed", env=WRONG_ANSWERS)
        rolled = rolled_back_to(fleets, "shadowed", stable, "the shadow gate's rollback")
    verdict = rolled["lastVerdict"]
    print("figures:", verdict["reason"], verdict["measured"])  # shown with -s
    measured = verdict["measured"]
    assert verdict["result"] == "Failed"
    assert "shadow agreement 0.0% < 90.0%" in verdict["reason"]
    assert measured["shadowSamples"] >= 20
    assert measured["shadowAgreement"] == 0.0
    assert measured["errorRate"] == 0.0, "the canary raised no error: only its answers were wrong"
    # Every shadowed task's caller got the stable answer; the copies' answers were kept apart.
    cases = {
        str(task_id): ShadowCase.model_validate_json(raw)
        for task_id, raw in redis_client.hgetall(keys.shadow_cases).items()
    }
    copies = redis_client.hgetall(keys.shadow_outputs)
    assert len(cases) >= 20
    assert len(copies) >= 20
    results = asyncio.run(_results(redis_server.url, ns, "shadowed", list(cases)))
    assert set(results) == set(cases)
    for task_id, result in results.items():
        assert result.revision == stable, f"{task_id} answered by {result.agent_id}"
        assert result.output == cases[task_id].output
        assert result.output == result.output.lower(), "never the canary's upper-cased copy"
    every_task_accounted_for(redis_client, keys, traffic.ids)
