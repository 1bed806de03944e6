"""A backlog queued as the e2e tests start, aged while they run (test_a_backlog_loses_nothing).

The test's promise takes ten minutes of real time: a signed fleet at zero replicas keeps 20
queued tasks for 10 minutes, then runs them all. Waiting those minutes in the test itself made
every CI run ten minutes longer for a test that does nothing meanwhile. The backlog is queued
instead by a session fixture at the first e2e test, in a namespace of its own, and ages while
the rest of the suite runs (Redis restarts and operator restarts included); the test checks it at
the end and waits only for whatever part of the 10 minutes is left.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis
from kubernetes import client as k8s_client

from harness import Cluster, Fleets, RedisHandle, agents_of, signing_secret, start_fleet, submit
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.wire.keys import FleetKeys

TEST_ID = "tests/e2e/test_task_promises.py::test_a_backlog_loses_nothing"
FLEET = "sleepy"
KEY = "backlog-signing-key-0123456789abcdef"
TASKS = 20
AGE_SECONDS = 600.0


@dataclass(frozen=True)
class AgedBacklog:
    """The queued backlog: where it is and since when."""

    fleets: Fleets
    runner: PodRunnerProcess
    keys: FleetKeys
    queued_at: float

    def wait_until_aged(self) -> float:
        """Block until the backlog is AGE_SECONDS old; its age then."""
        wait_for(
            lambda: time.monotonic() - self.queued_at >= AGE_SECONDS,
            AGE_SECONDS + 60, interval=10, what=f"the backlog {AGE_SECONDS:g}s old",
        )  # fmt: skip
        return time.monotonic() - self.queued_at


def queue_backlog(
    cluster: Cluster, api: k8s_client.ApiClient, redis_server: RedisHandle, state_root: Path
) -> Iterator[AgedBacklog]:
    """Start the fleet once (so its consumer group exists), scale it to zero, queue the tasks."""
    core = k8s_client.CoreV1Api(api)
    namespace = f"t-aged-backlog-{uuid.uuid4().hex[:6]}"
    core.create_namespace(
        k8s_client.V1Namespace(
            metadata=k8s_client.V1ObjectMeta(name=namespace, labels={"newfuse.io/test": "true"})
        )
    )
    runner = PodRunnerProcess(state_root / namespace)
    client = redis.Redis.from_url(redis_server.url, decode_responses=True)
    try:
        runner.up(cluster.kubeconfig, redis_server.url, print, namespace=namespace)
        fleets = Fleets(api, namespace)
        signing = signing_secret(api, namespace, KEY)
        start_fleet(fleets, runner, client, FLEET, 1, fast=False, signing=signing)
        fleets.patch_spec(FLEET, replicas=0)
        wait_for(lambda: not agents_of(runner, namespace), 60, what="scaled to zero")
        submit(FLEET, namespace, redis_server.url, "--count", str(TASKS), "--payload",
               '"queued"', key=KEY)  # fmt: skip
        submit(FLEET, namespace, redis_server.url, "--id", "too-late", "--deadline", "2m", key=KEY)
        print(f"aged backlog: {TASKS} tasks queued in {namespace}, checked at the end")
        yield AgedBacklog(fleets, runner, FleetKeys(namespace, FLEET), time.monotonic())
    finally:
        client.close()
        runner.down()
        core.delete_namespace(namespace)
