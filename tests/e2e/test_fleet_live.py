"""The live feed: a WebSocket (and SSE) per fleet, against a gateway process, real agents and Redis.

Every test runs the gateway with its default settings: bearer tokens from the API server, RBAC
through SubjectAccessReview, the default poll period and queue size.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import httpx
import pytest
import redis
import redis.asyncio as aioredis
from kubernetes import client as k8s_client
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from fleetapi_auth import service_account
from gatewayproc import GatewayProcess
from harness import Fleets, RedisHandle, start_fleet
from localcluster.podrunner import PodRunnerProcess
from newfuse.adapters.taskclient import TaskClient, TaskSpec
from newfuse.fleetapi.liveroutes import CLOSE_FORBIDDEN, CLOSE_NOT_FOUND, CLOSE_UNAUTHENTICATED
from newfuse.wire.keys import FleetKeys

pytestmark = pytest.mark.usefixtures("operator")
WATCH_ONLY = [{"apiGroups": ["newfuse.io"], "resources": ["newfuseagents"], "verbs": ["watch"]}]


def ws_url(gateway: GatewayProcess, namespace: str, fleet: str) -> str:
    return f"ws://127.0.0.1:{gateway.port}/live/{namespace}/{fleet}"


def _open(url: str, token: str, **options: Any) -> Any:
    return connect(url, additional_headers={"Authorization": f"Bearer {token}"}, **options)


async def _next(ws: ClientConnection, timeout: float = 30) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(ws.recv(), timeout)))


def test_a_client_sees_a_scale_from_2_to_4_within_2s_of_the_first_heartbeats(
    gateway: GatewayProcess,
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_client: redis.Redis,
    viewer: str,
) -> None:
    ns = fleets.namespace
    start_fleet(fleets, pod_runner, redis_client, "scaled", 2, env=[])  # default heartbeats
    keys = FleetKeys(ns, "scaled")

    async def run() -> tuple[dict[str, float], dict[str, float], list[dict[str, Any]]]:
        first_in_redis: dict[str, float] = {}
        first_in_feed: dict[str, float] = {}
        fleet_events: list[dict[str, Any]] = []
        async with _open(ws_url(gateway, ns, "scaled"), viewer) as ws:
            snapshot = await _next(ws)
            assert snapshot["type"] == "snapshot"
            known = {a["id"] for a in snapshot["agents"]}
            assert len(known) == 2, snapshot
            fleets.patch_spec("scaled", replicas=4)

            async def watch_redis() -> None:  # when each agent's first heartbeat landed
                while len(first_in_redis) < 2:
                    for agent in await asyncio.to_thread(redis_client.hkeys, keys.agents):
                        name = str(agent)  # the session's client decodes replies
                        if name not in known:
                            first_in_redis.setdefault(name, time.time())
                    await asyncio.sleep(0.05)

            watcher = asyncio.create_task(watch_redis())
            deadline = time.monotonic() + 90
            while len(first_in_feed) < 2 or not _ready(fleet_events, 4):
                event = await _next(ws, max(0.1, deadline - time.monotonic()))
                if event["type"] == "agent" and event["agent"]["id"] not in known:
                    first_in_feed.setdefault(event["agent"]["id"], time.time())
                elif event["type"] == "fleet":
                    fleet_events.append(event["fleet"])
            await asyncio.wait_for(watcher, 10)
        return first_in_redis, first_in_feed, fleet_events

    in_redis, in_feed, fleet_events = asyncio.run(run())
    assert in_redis.keys() == in_feed.keys()
    delays = {agent: in_feed[agent] - in_redis[agent] for agent in in_feed}
    print(f"first heartbeat in Redis -> in the feed: {delays}")
    assert all(delay <= 2.0 for delay in delays.values()), delays
    assert fleet_events[-1]["phase"] == "Available"


def _ready(fleet_events: list[dict[str, Any]], replicas: int) -> bool:
    return bool(fleet_events) and fleet_events[-1].get("readyReplicas") == replicas


def test_watching_needs_a_token_and_watch_on_the_fleet_and_results_need_get_on_tasks(
    gateway: GatewayProcess,
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_client: redis.Redis,
    viewer: str,
    k8s_api: k8s_client.ApiClient,
    redis_server: RedisHandle,
) -> None:
    ns, redis_url = fleets.namespace, redis_server.url
    start_fleet(fleets, pod_runner, redis_client, "watched", 1)
    watch_only = service_account(k8s_api, ns, "watch-only", rules=WATCH_ONLY)
    nobody = service_account(k8s_api, ns, "nobody", rules=[])
    url = ws_url(gateway, ns, "watched")

    async def refused(token: str | None, target: str = url) -> tuple[int, str]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        with pytest.raises(ConnectionClosed) as closed:
            async with connect(target, additional_headers=headers) as ws:
                await ws.recv()
        assert closed.value.rcvd is not None, "the gateway sent a close frame"
        return closed.value.rcvd.code, closed.value.rcvd.reason

    async def run() -> tuple[list[str], list[str]]:
        assert (await refused(None))[0] == CLOSE_UNAUTHENTICATED
        code, reason = await refused(nobody)
        assert code == CLOSE_FORBIDDEN
        assert f"system:serviceaccount:{ns}:nobody may not watch" in reason
        assert (await refused(viewer, ws_url(gateway, ns, "no-such")))[0] == CLOSE_NOT_FOUND
        async with _open(url, viewer) as reader, _open(url, watch_only) as blind:
            await _next(reader), await _next(blind)
            client = TaskClient(aioredis.from_url(redis_url, decode_responses=True), ns, "watched")
            task_id = (await client.submit(TaskSpec("echo", {"text": "hi"}))).task_id
            await client.client.aclose()
            seen = [e["type"] async for e in _events_until(reader, task_id)]
            # the result has come: whatever the blind watcher had by then, it had no result
            await asyncio.sleep(1.0)
            unseen = []
            while True:
                try:
                    unseen.append((await _next(blind, 0.2))["type"])
                except TimeoutError:
                    break
        return seen, unseen

    seen, unseen = asyncio.run(run())
    assert "result" in seen
    assert "result" not in unseen
    body = httpx.get(
        f"{gateway.url}/live/{ns}/watched/events", timeout=10, headers={"Accept": "text/html"}
    )
    assert body.status_code == 401


async def _events_until(ws: ClientConnection, task_id: str) -> Any:
    while True:
        event = await _next(ws)
        yield event
        if event["type"] == "result" and event["taskId"] == task_id:
            assert event["status"] == "succeeded"
            return
