"""The fleet API: the official a2a-sdk client against a gateway process, a real fleet and Redis.

Every fleet is an A2A v1.0 agent at `/a2a/<namespace>/<fleet>/`; these tests drive it only through
`a2a-sdk`'s own client (and raw HTTP where the point is a header the client would not send wrong).
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
import pytest_asyncio
import redis
from a2a.client import Client, ClientCallContext, ClientConfig, create_client
from a2a.types.a2a_pb2 import (
    CancelTaskRequest,
    GetTaskRequest,
    ListTasksRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    StreamResponse,
    SubscribeToTaskRequest,
    TaskState,
)
from a2a.utils.errors import A2AError, TaskNotCancelableError
from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.struct_pb2 import Value
from kubernetes import client as k8s_client

from fleetapi_auth import SUBMITTER, apply_chart_roles, service_account
from gatewayproc import GatewayProcess
from harness import Fleets, start_fleet
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess
from newfuse.wire.keys import FleetKeys
from newfuse.wire.tasks import Priority
from newfuse.wire.usage import HARD_TOKENS, SECONDS_PER_DAY

pytestmark = pytest.mark.usefixtures("operator")


@pytest.fixture(scope="session")
def chart_roles(k8s_api: k8s_client.ApiClient) -> None:
    apply_chart_roles(k8s_api)


@pytest.fixture
def token(k8s_api: k8s_client.ApiClient, namespace: str, chart_roles: None) -> str:
    """A ServiceAccount token bound to the chart's task-submitter role in this namespace."""
    return service_account(k8s_api, namespace, "caller", cluster_role=SUBMITTER)


@pytest.fixture
def echo_fleet(
    fleets: Fleets, pod_runner: PodRunnerProcess, redis_client: redis.Redis, gateway: GatewayProcess
) -> str:
    """A fleet of two agents that can `echo` and `sleep`, and whose status names its endpoint."""
    body = start_fleet(
        fleets, pod_runner, redis_client, "echoes", 2, capabilities=["echo", "sleep"]
    )
    assert body["status"]["endpoints"] == {"a2a": gateway.fleet_url(fleets.namespace, "echoes")}
    return "echoes"


def _message(*parts: Part, message_id: str | None = None, skill: str = "echo") -> Message:
    message = Message(
        message_id=message_id or uuid.uuid4().hex, role=Role.ROLE_USER, parts=list(parts)
    )
    message.metadata.update({"skill": skill})
    return message


async def _client(
    gateway: GatewayProcess, namespace: str, fleet: str, token: str, **config: Any
) -> Client:
    # The client resolves the Agent Card under the base URL, then posts to the card's interface.
    http = httpx.AsyncClient(headers=bearer(token), timeout=60)
    return await create_client(
        gateway.fleet_url(namespace, fleet).rstrip("/"),
        client_config=ClientConfig(httpx_client=http, **config),
    )


def _raw_send(request_id: int, message_id: str) -> dict[str, Any]:
    """A SendMessage call as raw JSON-RPC, for what the SDK client would not send."""
    message = {"messageId": message_id, "role": "ROLE_USER", "parts": [{"text": "x"}]}
    return {
        "jsonrpc": "2.0",
        "id": request_id,
        "method": "SendMessage",
        "params": {"message": message},
    }


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest_asyncio.fixture
async def blocking(
    gateway: GatewayProcess, fleets: Fleets, echo_fleet: str, token: str
) -> AsyncIterator[Client]:
    client = await _client(gateway, fleets.namespace, echo_fleet, token, streaming=False)
    yield client
    await client.close()


@pytest.mark.asyncio
async def test_agent_card_names_the_fleet_its_skills_and_its_endpoint(
    gateway: GatewayProcess, fleets: Fleets, echo_fleet: str
) -> None:
    async with httpx.AsyncClient() as http:
        reply = await http.get(
            gateway.fleet_url(fleets.namespace, echo_fleet) + ".well-known/agent-card.json"
        )
    assert reply.status_code == 200, reply.text
    card = reply.json()
    assert card["name"] == echo_fleet
    assert [s["id"] for s in card["skills"]] == ["echo", "sleep"]
    assert card["supportedInterfaces"] == [
        {
            "url": gateway.fleet_url(fleets.namespace, echo_fleet),
            "protocolBinding": "JSONRPC",
            "protocolVersion": "1.0",
        }
    ]
    assert card["capabilities"]["streaming"] is True


@pytest.mark.asyncio
async def test_send_message_returns_the_completed_task_with_the_echo_output(
    blocking: Client,
) -> None:
    [event] = [
        e
        async for e in blocking.send_message(
            SendMessageRequest(message=_message(Part(text="hello")))
        )
    ]
    task = event.task
    assert task.status.state == TaskState.TASK_STATE_COMPLETED, task
    assert [p.text for p in task.artifacts[0].parts] == ["hello"]
    data = _message(Part(data=ParseDict({"n": 1, "words": ["a", "b"]}, Value())))
    [event] = [e async for e in blocking.send_message(SendMessageRequest(message=data))]
    assert MessageToDict(event.task.artifacts[0].parts[0].data) == {"n": 1, "words": ["a", "b"]}


@pytest.mark.asyncio
async def test_streamed_events_arrive_in_order(
    gateway: GatewayProcess, fleets: Fleets, echo_fleet: str, token: str
) -> None:
    client = await _client(gateway, fleets.namespace, echo_fleet, token, streaming=True)
    try:
        events = [
            e
            async for e in client.send_message(
                SendMessageRequest(message=_message(Part(text="hi")))
            )
        ]
    finally:
        await client.close()
    kinds = [e.WhichOneof("payload") for e in events]
    assert kinds == ["task", "status_update", "artifact_update", "status_update"], events
    assert events[0].task.status.state == TaskState.TASK_STATE_SUBMITTED
    assert events[1].status_update.status.state == TaskState.TASK_STATE_WORKING
    assert [p.text for p in events[2].artifact_update.artifact.parts] == ["hi"]
    assert events[3].status_update.status.state == TaskState.TASK_STATE_COMPLETED
    assert len({_task_id(e) for e in events}) == 1
    ids = [_event_id(e) for e in events[1:]]
    assert ids == sorted(ids, key=_id_key), "event ids must grow"


def _payload(event: StreamResponse) -> Any:
    return getattr(event, str(event.WhichOneof("payload")))


def _task_id(event: StreamResponse) -> str:
    return event.task.id if event.HasField("task") else _payload(event).task_id


def _event_id(event: StreamResponse) -> str:
    return str(_payload(event).metadata["newfuse.eventId"])


def _id_key(event_id: str) -> tuple[int, int, int]:
    entry, _, part = event_id.partition("#")
    ms, _, seq = entry.partition("-")
    return int(ms), int(seq), int(part)


def _log_entry(event: StreamResponse) -> tuple[str, int]:
    """What a streamed update says, to compare streams: its kind and the state it reports."""
    kind = str(event.WhichOneof("payload"))
    return kind, _payload(event).status.state if kind == "status_update" else 0


@pytest.mark.asyncio
async def test_a_stream_killed_mid_way_resumes_from_the_last_event_id_100_times(
    gateway: GatewayProcess, fleets: Fleets, echo_fleet: str, token: str
) -> None:
    """Each run cuts the stream after 1, 2 or 3 events, then SubscribeToTask with Last-Event-ID.

    Put together, the two streams hold every update of the task once, in order: working, the
    output, completed (the Task each stream opens with is the state it starts from).
    """
    client = await _client(gateway, fleets.namespace, echo_fleet, token, streaming=True)
    expected = [
        ("status_update", TaskState.TASK_STATE_WORKING),
        ("artifact_update", 0),
        ("status_update", TaskState.TASK_STATE_COMPLETED),
    ]
    try:
        for run in range(100):
            cut_after = 1 + run % 3
            message = _message(
                Part(data=ParseDict({"seconds": 0.05, "run": run}, Value())), skill="sleep"
            )
            before: list[StreamResponse] = []
            async for event in client.send_message(SendMessageRequest(message=message)):
                before.append(event)
                if len(before) == cut_after:
                    break  # closes the connection mid-stream
            resume = ClientCallContext(service_parameters={"Last-Event-ID": _event_id(before[-1])})
            request = SubscribeToTaskRequest(id=before[0].task.id)
            after = [e async for e in client.subscribe(request, context=resume)]
            assert after[0].HasField("task"), f"run {run}: a resumed stream starts with the Task"
            updates = before[1:] + after[1:]
            assert [_log_entry(e) for e in updates] == expected, (
                f"run {run} (cut after {cut_after})"
            )
            ids = [_event_id(e) for e in updates]
            assert len(set(ids)) == len(ids), f"run {run}: an event came twice: {ids}"
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_a_message_sent_twice_is_one_task_and_get_and_list_find_it(
    blocking: Client, fleets: Fleets, echo_fleet: str, redis_client: redis.Redis
) -> None:
    message = _message(Part(text="once"), message_id="retry-me")
    [first] = [e.task async for e in blocking.send_message(SendMessageRequest(message=message))]
    [again] = [e.task async for e in blocking.send_message(SendMessageRequest(message=message))]
    assert again.id == first.id
    keys = FleetKeys(fleets.namespace, echo_fleet)
    assert redis_client.hlen(keys.result_index) == 1, "the second send ran the task again"
    got = await blocking.get_task(GetTaskRequest(id=first.id))
    assert got.status.state == TaskState.TASK_STATE_COMPLETED
    assert got.context_id == first.context_id
    listed = await blocking.list_tasks(ListTasksRequest(include_artifacts=True))
    assert [t.id for t in listed.tasks] == [first.id]
    assert [p.text for p in listed.tasks[0].artifacts[0].parts] == ["once"]


@pytest.mark.asyncio
async def test_cancel_task_ends_a_queued_task_canceled_and_no_agent_runs_it(
    gateway: GatewayProcess,
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_client: redis.Redis,
    token: str,
) -> None:
    # No agents: the task waits in the stream, as behind a long backlog.
    start_fleet(fleets, pod_runner, redis_client, "idle", 0, capabilities=["echo"])
    client = await _client(gateway, fleets.namespace, "idle", token, streaming=False)
    try:
        request = SendMessageRequest(
            message=_message(Part(text="never")),
            configuration=SendMessageConfiguration(return_immediately=True),
        )
        [event] = [e async for e in client.send_message(request)]
        assert event.task.status.state == TaskState.TASK_STATE_SUBMITTED
        keys = FleetKeys(fleets.namespace, "idle")
        assert redis_client.xlen(keys.tasks(Priority.NORMAL)) == 1
        cancelled = await client.cancel_task(CancelTaskRequest(id=event.task.id))
        assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
        assert redis_client.xlen(keys.tasks(Priority.NORMAL)) == 0, "an agent could still run it"
        with pytest.raises(TaskNotCancelableError):
            await client.cancel_task(CancelTaskRequest(id=event.task.id))
        got = await client.get_task(GetTaskRequest(id=event.task.id))
        assert got.status.state == TaskState.TASK_STATE_CANCELED
    finally:
        await client.close()


@pytest.mark.asyncio
async def test_a2a_version_negotiation_holds_clients_to_the_fleets_protocol_version(
    gateway: GatewayProcess,
    fleets: Fleets,
    echo_fleet: str,
    token: str,
    redis_client: redis.Redis,
) -> None:
    body = _raw_send(7, "v")
    url = gateway.fleet_url(fleets.namespace, echo_fleet)
    async with httpx.AsyncClient(timeout=60) as http:
        card = (await http.get(url + ".well-known/agent-card.json")).json()
        assert card["supportedInterfaces"][0]["protocolVersion"] == "1.0"  # spec.protocolVersion
        for asked in ("9.9", "1.1", "0.3", "one"):
            reply = await http.post(url, json=body, headers={"A2A-Version": asked, **bearer(token)})
            error = reply.json()["error"]
            assert (error["code"], reply.json()["id"]) == (-32009, 7), (asked, reply.text)
            assert "this fleet speaks A2A 1.0" in error["message"], error
        ok = await http.post(url, json=body, headers={"A2A-Version": "1.0.3", **bearer(token)})
        assert "result" in ok.json(), ok.text  # the patch level is ignored
    # The accepted call's A2A major is counted as live traffic (the protocol gate reads it); the
    # refused ones are not.
    keys = FleetKeys(fleets.namespace, echo_fleet)
    assert redis_client.zrange(keys.protocol, 0, -1) == ["1"]


@pytest.mark.asyncio
async def test_a_fleet_over_its_hard_budget_refuses_a2a_messages_with_invalid_request(
    gateway: GatewayProcess,
    fleets: Fleets,
    echo_fleet: str,
    token: str,
    redis_client: redis.Redis,
) -> None:
    keys = FleetKeys(fleets.namespace, echo_fleet)
    seconds, _ = redis_client.time()
    redis_client.hincrby(keys.usage, f"day:{seconds // SECONDS_PER_DAY}:tokens", 50)
    fleets.patch_spec(echo_fleet, budget={"hardTokens": 40})
    wait_for(lambda: redis_client.hget(keys.budget, HARD_TOKENS) == "40", 30, what="budget")
    body = _raw_send(9, "b")
    url = gateway.fleet_url(fleets.namespace, echo_fleet)
    async with httpx.AsyncClient(timeout=60) as http:
        reply = await http.post(url, json=body, headers={"A2A-Version": "1.0", **bearer(token)})
    error = reply.json()["error"]
    assert error["code"] == -32600, reply.text  # A2A InvalidRequestError
    assert f"fleet {fleets.namespace}/{echo_fleet} is over its hard budget" in error["message"]
    assert "50 tokens of spec.budget.hardTokens 40 spent" in error["message"]
    assert redis_client.hlen(keys.a2a_tasks) == 0, "nothing refused was kept"


@pytest.mark.asyncio
async def test_unknown_fleets_and_skills_are_refused_by_name(
    gateway: GatewayProcess, fleets: Fleets, blocking: Client
) -> None:
    async with httpx.AsyncClient() as http:
        reply = await http.get(
            gateway.fleet_url(fleets.namespace, "nope") + ".well-known/agent-card.json"
        )
    assert reply.status_code == 404
    assert "nope" in reply.json()["error"]
    request = SendMessageRequest(message=_message(Part(text="x"), skill="translate"))
    with pytest.raises(A2AError, match=r"message\.metadata\.skill: 'translate'"):
        _ = [e async for e in blocking.send_message(request)]
