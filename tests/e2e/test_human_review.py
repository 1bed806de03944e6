"""Human review with the operator's agents: spec.review, the CLI, the gateway, RBAC, timeouts.

Fleets are NewFuseAgents whose pods the pod runner starts as agent processes; people act through
`newfuse review` (on Redis with a kubeconfig, or through the gateway with a token) as users do.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
import yaml

from fleetapi_auth import REVIEWER, service_account, token_for
from gatewayproc import GatewayProcess
from harness import NEWFUSE_CLI, Cluster, Fleets, RedisHandle, start_fleet, submit, wait_results
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.adapters.reviews import ReviewStore
from newfuse.adapters.taskclient import TaskClient
from newfuse.wire.keys import FleetKeys
from newfuse.wire.review import Feedback, Review
from newfuse.wire.reviewscripts import COUNTER_REVIEWS_TIMED_OUT
from newfuse.wire.scripts import COUNTER_DUPLICATES

pytestmark = pytest.mark.usefixtures("operator")


def _cli(*args: str, **env: str) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith("NEWFUSE_")}
    clean.pop("KUBECONFIG", None)
    return subprocess.run(
        [NEWFUSE_CLI, *args], capture_output=True, text=True, timeout=120, check=False,
        env={**clean, "NO_COLOR": "1", "COLUMNS": "250", **env},
    )  # fmt: skip


def _open(url: str, ns: str, fleet: str, n: int, timeout: float = 60) -> list[Review]:
    found: list[Review] = []

    async def read() -> list[Review]:
        client = TaskClient.from_url(url, ns, fleet, signing_key=None)
        try:
            return await ReviewStore(client.client, client.keys).open_reviews()
        finally:
            await client.aclose()

    def enough() -> bool:
        found[:] = asyncio.run(read())
        return len(found) >= n

    wait_for(enough, timeout, what=f"{n} open reviews of {fleet}")
    return found


def _feedback(url: str, ns: str, fleet: str) -> list[Feedback]:
    async def read() -> list[Feedback]:
        client = TaskClient.from_url(url, ns, fleet, signing_key=None)
        try:
            return await ReviewStore(client.client, client.keys).feedback()
        finally:
            await client.aclose()

    return asyncio.run(read())


def _kubeconfig_as(admin: Path, token: str, path: Path) -> Path:
    """The admin kubeconfig's cluster, with a ServiceAccount's token as the user."""
    config = yaml.safe_load(admin.read_text())
    config["users"] = [{"name": "sa", "user": {"token": token}}]
    for context in config["contexts"]:
        context["context"]["user"] = "sa"
    path.write_text(yaml.safe_dump(config))
    return path


def _feed_snapshot(gateway_url: str, ns: str, fleet: str, token: str) -> dict[str, Any]:
    """The first event of the fleet's live feed (SSE): what the live page draws first."""
    url = f"{gateway_url}/live/{ns}/{fleet}/events"
    headers = {"Authorization": f"Bearer {token}"}
    with httpx.stream("GET", url, headers=headers, timeout=30) as events:
        for line in events.iter_lines():
            if line.startswith("data:"):
                return dict(json.loads(line[len("data:") :]))
    raise AssertionError("the feed ended without a snapshot")


def test_a_waiting_task_holds_no_slot_and_the_cli_approves_or_rejects_it(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_client: redis.Redis,
    redis_server: RedisHandle,
    cluster: Cluster,
) -> None:
    ns, url = fleets.namespace, redis_server.url
    review = {"handlers": ["echo"]}  # the default timeout: a day, then rejected
    start_fleet(fleets, pod_runner, redis_client, "reviewed", 1, capabilities=["echo", "sleep"],
                concurrency=1, review=review)  # fmt: skip
    submit("reviewed", ns, url, "--id", "draft-1", "--payload", '"first draft"')
    submit("reviewed", ns, url, "--id", "draft-2", "--payload", '"off-topic draft"')
    waiting = {r.request.task_id: r for r in _open(url, ns, "reviewed", 2)}
    for one in waiting.values():
        assert one.due is not None
        assert abs((one.due - one.request.created_at).total_seconds() - 86400) < 5

    # One agent, concurrency 1, two tasks waiting for people: the slot still serves other work.
    ids = [f"other-{i}" for i in range(3)]
    for task_id in ids:
        submit(
            "reviewed",
            ns,
            url,
            "--id",
            task_id,
            "--handler",
            "sleep",
            "--payload",
            '{"seconds": 0.2}',
        )
    assert all(r.status.value == "succeeded" for r in wait_results(url, ns, "reviewed", ids, 30))

    admin = {"NEWFUSE_REDIS_URL": url, "KUBECONFIG": str(cluster.kubeconfig)}
    listed = _cli("review", "list", "reviewed", "-n", ns, **admin)
    assert listed.returncode == 0, listed.stderr
    assert "draft-1.output.0" in listed.stdout
    assert "draft-2.output.0" in listed.stdout

    approved = _cli("review", "approve", "reviewed", "draft-1.output.0", "-n", ns,
                    "--output", '"final draft"', "-c", "tightened", **admin)  # fmt: skip
    assert approved.returncode == 0, approved.stderr
    rejected = _cli("review", "reject", "reviewed", "draft-2.output.0", "-n", ns,
                    "--reason", "off topic", **admin)  # fmt: skip
    assert rejected.returncode == 0, rejected.stderr
    first, second = wait_results(url, ns, "reviewed", ["draft-1", "draft-2"], 30)
    assert (first.status.value, first.output) == ("succeeded", "final draft")
    assert (second.status.value, second.reason) == ("failed", "rejected")
    assert "off topic" in (second.error or "")

    again = _cli("review", "approve", "reviewed", "draft-2.output.0", "-n", ns, **admin)
    assert again.returncode == 1
    assert "already decided: rejected" in again.stderr

    exported = _cli("review", "feedback", "reviewed", "-n", ns, "--json", **admin)
    assert exported.returncode == 0, exported.stderr
    rows = [json.loads(line) for line in exported.stdout.splitlines()]
    assert [(r["state"], r["decision"]["comment"]) for r in rows] == [
        ("approved", "tightened"), ("rejected", "off topic"),
    ]  # fmt: skip
    assert rows[0]["request"]["output"] == "first draft"
    assert rows[0]["decision"]["answer"] == "final draft"
    assert rows[0]["request"]["revision"], "feedback is kept per revision"


def test_a_5s_review_timeout_rejects_each_task_exactly_once_with_three_agents(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_client: redis.Redis,
    redis_server: RedisHandle,
) -> None:
    ns, url = fleets.namespace, redis_server.url
    review = {"handlers": ["echo"], "timeoutSeconds": 5, "onTimeout": "reject"}
    start_fleet(fleets, pod_runner, redis_client, "timed", 3, fast=False, capabilities=["echo"],
                review=review)  # fmt: skip
    ids = [f"t-{i}" for i in range(12)]
    for task_id in ids:
        submit("timed", ns, url, "--id", task_id, "--payload", json.dumps(task_id))
    results = wait_results(url, ns, "timed", ids, 90)
    assert all(r.reason == "rejected" for r in results), [r.error for r in results]
    assert all("timed out" in (r.error or "") for r in results)
    # Each timeout applies once although three agents race for it every second.
    keys = FleetKeys(ns, "timed")
    counters = redis_client.hgetall(keys.counters)
    assert int(counters[COUNTER_REVIEWS_TIMED_OUT]) == len(ids)
    assert int(counters.get(COUNTER_DUPLICATES, 0)) == 0
    assert redis_client.xlen(keys.review_log) == len(ids)
    assert redis_client.xlen(keys.result_stream) == len(ids), "one result per task"
    rows = _feedback(url, ns, "timed")
    assert sorted(row.request.task_id for row in rows if row.request) == sorted(ids)
    assert {(row.decision.reviewer, row.decision.timed_out) for row in rows} == {
        ("system:timeout", True)
    }
    late = [
        (row.decision.decided_at - row.request.created_at).total_seconds() - 5
        for row in rows
        if row.request is not None
    ]
    assert min(late) > -0.1, "no timeout applied early (one clock: this machine)"
    assert max(late) < 3, f"a timeout applied {max(late):.2f}s late"
    print(f"timeouts applied 0 to {max(late):.2f}s after they came due ({len(late)} reviews)")


def test_rbac_governs_reviewers_through_the_gateway_and_the_cli(
    gateway: GatewayProcess,
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_client: redis.Redis,
    redis_server: RedisHandle,
    cluster: Cluster,
    k8s_api: Any,
    viewer: str,
    submitter: str,
    tmp_path: Path,
) -> None:
    ns, url = fleets.namespace, redis_server.url
    start_fleet(fleets, pod_runner, redis_client, "guarded", 1, capabilities=["echo"],
                review={"handlers": ["echo"]})  # fmt: skip
    submit("guarded", ns, url, "--id", "g-1", "--payload", '"needs a look"')
    [waiting] = _open(url, ns, "guarded", 1)
    review_id = waiting.request.id
    queue = f"{gateway.url}/reviews/{ns}/guarded"

    def call(token: str, method: str = "GET", path: str = "", **kw: Any) -> httpx.Response:
        headers = {"Authorization": f"Bearer {token}"}
        return httpx.request(method, queue + path, headers=headers, timeout=30, **kw)

    assert _feed_snapshot(gateway.url, ns, "guarded", viewer)["fleet"]["reviewsPending"] == 1
    assert call(submitter).status_code == 403, "submitting tasks is not reviewing them"
    seen = call(viewer)
    assert seen.status_code == 200
    assert [r["request"]["id"] for r in seen.json()["reviews"]] == [review_id]
    denied = call(viewer, "POST", f"/{review_id}", json={"verdict": "approve"})
    assert denied.status_code == 403
    assert "may not update newfuseagents/reviews" in denied.json()["error"]

    remote = _cli("--server", gateway.url, "--token", viewer, "review", "approve", "guarded",
                  review_id, "-n", ns)  # fmt: skip
    assert remote.returncode == 1
    assert "Forbidden" in remote.stderr, remote.stderr
    api_token = token_for(k8s_api, ns, "viewer", audience=None)  # the API server's audience
    as_viewer = _kubeconfig_as(cluster.kubeconfig, api_token, tmp_path / "viewer.kubeconfig")
    direct = _cli("review", "approve", "guarded", review_id, "-n", ns,
                  NEWFUSE_REDIS_URL=url, KUBECONFIG=str(as_viewer))  # fmt: skip
    assert direct.returncode == 1
    assert "Forbidden" in direct.stderr, direct.stderr
    assert _open(url, ns, "guarded", 1)[0].state.value == "pending", "nothing was decided"

    reviewer = service_account(k8s_api, ns, "reviewer", cluster_role=REVIEWER)
    allowed = _cli("--server", gateway.url, "--token", reviewer, "review", "approve", "guarded",
                   review_id, "-n", ns, "-c", "fine")  # fmt: skip
    assert allowed.returncode == 0, allowed.stderr
    [result] = wait_results(url, ns, "guarded", ["g-1"], 30)
    assert (result.status.value, result.output) == ("succeeded", "needs a look")
    feedback = call(viewer, path="/feedback").json()["feedback"]
    assert [row["decision"]["reviewer"] for row in feedback] == [
        f"system:serviceaccount:{ns}:reviewer"
    ]
    assert feedback[0]["decision"]["comment"] == "fine"
