"""Push notifications: webhooks of real tasks, delivered, signed, retried and dead-lettered.

A local HTTP receiver plays the client's webhook endpoints: one that takes everything, one that
fails twice before it takes, one that always fails (5xx) and one that refuses (404). The gateway
runs with its default delivery settings (5 tries, backoff from 1 s), except that it may call the
loopback receiver (`NEWFUSE_GATEWAY_PUSH_ALLOW_PRIVATE`); the default screen is tested too.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import threading
import uuid
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
import redis
from a2a.client import ClientConfig, create_client
from a2a.types.a2a_pb2 import (
    DeleteTaskPushNotificationConfigRequest,
    ListTaskPushNotificationConfigsRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    TaskPushNotificationConfig,
)
from a2a.utils.errors import A2AError

from gatewayproc import GatewayProcess
from harness import Cluster, Fleets, RedisHandle, start_fleet
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.wire.keys import FleetKeys

pytestmark = pytest.mark.usefixtures("operator")


class Receiver:
    """Webhook endpoints on loopback; `calls[path]` is what each received, in order."""

    def __init__(self) -> None:
        self.calls: dict[str, list[tuple[dict[str, str], bytes]]] = {}
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                seen = receiver.calls.setdefault(self.path, [])
                seen.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(receiver.answer(self.path, len(seen)))
                self.end_headers()

            def log_message(self, *_: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @staticmethod
    def answer(path: str, nth: int) -> int:
        return {"/ok": 200, "/flaky": 503 if nth <= 2 else 200, "/down": 500}.get(path, 404)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    found = Receiver()
    yield found
    found.server.shutdown()


@pytest.fixture
def pushing_gateway(redis_server: RedisHandle, cluster: Cluster) -> Iterator[GatewayProcess]:
    kubeconfig = str(cluster.kubeconfig)
    with GatewayProcess(
        redis_server.url, NEWFUSE_KUBECONFIG=kubeconfig, NEWFUSE_GATEWAY_PUSH_ALLOW_PRIVATE="true"
    ) as running:
        yield running


def _signed_by(token: str, headers: dict[str, str], body: bytes) -> bool:
    signed = f"{headers['webhook-id']}.{headers['webhook-timestamp']}.".encode() + body
    digest = hmac.new(token.encode(), signed, hashlib.sha256).digest()
    return headers["webhook-signature"] == "v1," + base64.b64encode(digest).decode()


def _send(url: str, token: str | None) -> SendMessageRequest:
    message = Message(message_id=uuid.uuid4().hex, role=Role.ROLE_USER, parts=[Part(text="hi")])
    message.metadata.update({"skill": "echo"})
    config = SendMessageConfiguration(return_immediately=True)
    config.task_push_notification_config.url = url
    if token:
        config.task_push_notification_config.token = token
    return SendMessageRequest(message=message, configuration=config)


def _metric(gateway: GatewayProcess, outcome: str) -> float:
    text = httpx.get(gateway.url + "/metrics", timeout=10).text
    line = f'newfuse_gateway_webhooks_total{{outcome="{outcome}"}} '
    found = [row for row in text.splitlines() if row.startswith(line)]
    return float(found[0].split()[-1]) if found else 0.0


@pytest.mark.asyncio
async def test_webhooks_are_delivered_signed_retried_and_dead_lettered(
    pushing_gateway: GatewayProcess,
    receiver: Receiver,
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_client: redis.Redis,
    submitter: str,
) -> None:
    ns, gw = fleets.namespace, pushing_gateway
    start_fleet(fleets, pod_runner, redis_client, "pushed", 1, capabilities=["echo"])
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {submitter}"}, timeout=60)
    client = await create_client(
        gw.fleet_url(ns, "pushed").rstrip("/"),
        client_config=ClientConfig(httpx_client=http, streaming=False),
    )
    tasks = {}
    for path in ("/ok", "/flaky", "/down", "/gone"):
        async for reply in client.send_message(_send(receiver.url + path, f"tok{path}")):
            tasks[path] = reply.task.id

    def completed_on(path: str) -> bool:
        bodies = [json.loads(body) for _, body in receiver.calls.get(path, [])]
        return any(b["task"]["status"]["state"] == "TASK_STATE_COMPLETED" for b in bodies)

    wait_for(lambda: completed_on("/ok") and completed_on("/flaky"), 60, what="deliveries")
    for headers, body in receiver.calls["/ok"]:
        assert headers["x-a2a-notification-token"] == "tok/ok"
        assert _signed_by("tok/ok", headers, body), "the signature checks out with the token"
        assert json.loads(body)["task"]["id"] == tasks["/ok"]
        assert not _signed_by("another token", headers, body)

    def retried() -> bool:  # the 503s' retries come a backoff later than the other events
        tries = Counter(h["webhook-id"] for h, _ in receiver.calls["/flaky"])
        return max(tries.values()) >= 2

    wait_for(retried, 30, what="a refused delivery tried again with its webhook-id")

    keys = FleetKeys(ns, "pushed")

    def dead() -> dict[str, dict[str, str]]:
        entries: list[tuple[str, dict[str, str]]] = redis_client.xrange(keys.a2a_push_dead)  # type: ignore[assignment]
        return {fields["url"]: fields for _, fields in entries}

    gone = wait_for(lambda: len(dead()) >= 2 and dead(), 90, what="dead-letter records")
    assert gone[receiver.url + "/down"]["attempts"] == "5"
    assert gone[receiver.url + "/down"]["error"] == "HTTP 500"
    assert gone[receiver.url + "/gone"]["attempts"] == "1", "a 404 is not retried"
    assert gone[receiver.url + "/down"]["task_id"] == tasks["/down"]
    assert _metric(gw, "delivered") >= 2
    assert _metric(gw, "dead") >= 2

    listed = await client.list_task_push_notification_configs(
        ListTaskPushNotificationConfigsRequest(task_id=tasks["/ok"])
    )
    [config] = listed.configs
    assert (config.url, config.token) == (receiver.url + "/ok", ""), "no secret is read back"
    await client.delete_task_push_notification_config(
        DeleteTaskPushNotificationConfigRequest(task_id=tasks["/ok"], id=config.id)
    )
    empty = await client.list_task_push_notification_configs(
        ListTaskPushNotificationConfigsRequest(task_id=tasks["/ok"])
    )
    assert not empty.configs
    await client.close()


@pytest.mark.asyncio
@pytest.mark.parametrize(
    "url", ["http://127.0.0.1:9/hook", "http://169.254.169.254/latest", "file:///etc/passwd"]
)
async def test_by_default_webhooks_to_inside_addresses_are_refused(
    gateway: GatewayProcess,
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_client: redis.Redis,
    submitter: str,
    url: str,
) -> None:
    start_fleet(fleets, pod_runner, redis_client, "screened", 1, capabilities=["echo"])
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {submitter}"}, timeout=60)
    client = await create_client(
        gateway.fleet_url(fleets.namespace, "screened").rstrip("/"),
        client_config=ClientConfig(httpx_client=http, streaming=False),
    )
    with pytest.raises(A2AError, match="url"):
        async for _ in client.send_message(_send(url, None)):
            pass
    task_id = ""
    # A public address literal: the screen resolves names, and this machine resolves none.
    async for reply in client.send_message(_send("https://93.184.215.14/hook", None)):
        task_id = reply.task.id
    with pytest.raises(A2AError, match="url"):
        await client.create_task_push_notification_config(
            TaskPushNotificationConfig(task_id=task_id, url=url)
        )
    await client.close()
