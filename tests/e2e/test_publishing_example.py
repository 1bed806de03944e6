"""The README's worked example, as shipped in examples/publishing: research -> draft -> human
review -> publish, with a compensating unpublish. Run as a user runs it, with the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path
from typing import Any

import pytest
import redis
import yaml

from harness import NEWFUSE_CLI, Cluster, Fleets, RedisHandle, start_fleet, wait_results
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.adapters.reviews import ReviewStore
from newfuse.adapters.taskclient import TaskClient
from newfuse.wire.tasks import ResultPayload

pytestmark = pytest.mark.usefixtures("operator")
EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "publishing"


def _cli(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [NEWFUSE_CLI, *args], capture_output=True, text=True, timeout=120, check=False,
        env={**os.environ, "NO_COLOR": "1", "COLUMNS": "200", **env},
    )  # fmt: skip


def _result(url: str, ns: str, fleet: str, task_id: str, timeout: float) -> ResultPayload:
    [found] = wait_results(url, ns, fleet, [task_id], timeout)
    return found


def _draft_waits(url: str, ns: str, review_id: str) -> bool:
    async def read() -> bool:
        client = TaskClient.from_url(url, ns, "writers", signing_key=None)
        try:
            reviews = await ReviewStore(client.client, client.keys).open_reviews()
        finally:
            await client.aclose()
        return any(r.request.id == review_id for r in reviews)

    return asyncio.run(read())


def _submit(env: dict[str, str], ns: str, post: Path, post_id: str) -> str:
    sent = _cli(env, "tx", "submit", "editorial", "-n", ns, "-f", str(post), "--id", post_id)
    assert sent.returncode == 0, sent.stderr
    review_id = f"{post_id}.op.draft.output.0"
    wait_for(lambda: _draft_waits(env["NEWFUSE_REDIS_URL"], ns, review_id), 60,
             what=f"the draft of {post_id} to wait for review")  # fmt: skip
    return review_id


def _states(result: ResultPayload) -> list[str]:
    assert result.output is not None, result.error
    return [op["state"] for op in result.output["operations"]]


def test_the_publishing_example_commits_rolls_back_and_unpublishes(
    fleets: Fleets, pod_runner: PodRunnerProcess, redis_client: redis.Redis,
    redis_server: RedisHandle, cluster: Cluster, tmp_path: Path,
) -> None:  # fmt: skip
    ns, url = fleets.namespace, redis_server.url
    for doc in yaml.safe_load_all((EXAMPLE / "fleets.yaml").read_text()):
        spec: dict[str, Any] = {k: v for k, v in doc["spec"].items() if k != "image"}
        replicas, name = spec.pop("replicas"), doc["metadata"]["name"]
        start_fleet(fleets, pod_runner, redis_client, name, replicas, fast=False, **spec)
    env = {"NEWFUSE_REDIS_URL": url, "KUBECONFIG": str(cluster.kubeconfig)}
    post = EXAMPLE / "post.yaml"

    # A person edits the draft and approves it: published, and announced.
    review = _submit(env, ns, post, "post-1")
    approved = _cli(env, "review", "approve", "writers", review, "-n", ns,
                    "--output", '"Tea reached Europe in 1610."')  # fmt: skip
    assert approved.returncode == 0, approved.stderr
    done = _result(url, ns, "editorial", "post-1", 60)
    assert done.output is not None
    assert (done.output["status"], _states(done)) == ("committed", ["succeeded"] * 4)
    assert done.output["operations"][1]["output"] == "Tea reached Europe in 1610."

    # A person rejects the draft: nothing was published, nothing to undo.
    review = _submit(env, ns, post, "post-2")
    rejected = _cli(env, "review", "reject", "writers", review, "-n", ns, "-r", "no sources")
    assert rejected.returncode == 0, rejected.stderr
    undone = _result(url, ns, "editorial", "post-2", 60)
    assert _states(undone) == ["succeeded", "failed", "pending", "pending"]
    assert "no sources" in undone.output["operations"][1]["error"]

    # Approved and published, but the announcement fails: the page is unpublished.
    failing = yaml.safe_load(post.read_text())
    failing["operations"][3]["handler"] = "no-such-handler"
    broken = tmp_path / "post-broken.yaml"
    broken.write_text(yaml.safe_dump(failing))
    review = _submit(env, ns, broken, "post-3")
    assert _cli(env, "review", "approve", "writers", review, "-n", ns).returncode == 0
    unpublished = _result(url, ns, "editorial", "post-3", 60)
    assert unpublished.output is not None
    assert unpublished.output["status"] == "rolled_back"
    assert _states(unpublished) == ["succeeded", "succeeded", "compensated", "failed"]
    undo = _result(url, ns, "editorial", "post-3.undo.publish", 5)
    assert undo.output == {"unpublish": "/posts/42"}
    status = _cli(env, "tx", "status", "editorial", "post-3", "-n", ns)
    assert "transaction post-3: rolled_back" in status.stdout, status.stdout
