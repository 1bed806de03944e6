"""`newfuse --server URL`: the task commands through the fleet API gateway, with no Redis access.

The gateway speaks A2A, so this client is the a2a-sdk's own: a task is a SendMessage whose
metadata names the skill (the handler), its result the task's `result` artifact and metadata.
`agents` reads the first event of the fleet's live feed (a snapshot). The bearer token comes from
--token / NEWFUSE_TOKEN, else NEWFUSE_TOKEN_FILE, else the kubeconfig's user (a token, a token
file or an exec plugin, as kubectl runs it), else the pod's ServiceAccount token.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from pathlib import Path
from typing import Any, Final

import httpx
from a2a.client import Client, ClientConfig, create_client
from a2a.types.a2a_pb2 import (
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    Task,
    TaskState,
)
from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.struct_pb2 import Value

from newfuse.adapters.taskclient import Submitted, TaskSpec
from newfuse.adapters.taskerrors import FleetNotFoundError
from newfuse.wire.endpoints import RESULT_ARTIFACT, SKILL_KEY, a2a_url, live_path
from newfuse.wire.state import AgentMetrics, AgentState, AgentStatus, StateUpdate
from newfuse.wire.tasks import ResultPayload, ResultStatus

SERVICE_ACCOUNT_TOKEN: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/token")
_ENDED: Final = {
    TaskState.TASK_STATE_COMPLETED: ResultStatus.SUCCEEDED,
    TaskState.TASK_STATE_FAILED: ResultStatus.FAILED,
    TaskState.TASK_STATE_CANCELED: ResultStatus.FAILED,
    TaskState.TASK_STATE_REJECTED: ResultStatus.FAILED,
}


class GatewayError(RuntimeError):
    """The gateway refused or failed a call; the message says what it answered."""


def _kubeconfig_token() -> str | None:
    """The bearer token kubectl would send for the current context, if it sends one."""
    from kubernetes import config
    from kubernetes.client import Configuration

    loaded = Configuration()
    try:
        config.load_kube_config(  # type: ignore[no-untyped-call]
            config_file=os.environ.get("NEWFUSE_KUBECONFIG"), client_configuration=loaded
        )
    except (config.ConfigException, OSError, TypeError):
        return None
    header = loaded.api_key.get("BearerToken") or loaded.api_key.get("authorization") or ""
    return str(header).removeprefix("Bearer ").strip() or None


def find_token(explicit: str | None) -> str:
    """The caller's bearer token (see the module docstring for where it is looked for)."""
    if explicit:
        return explicit
    if path := os.environ.get("NEWFUSE_TOKEN_FILE"):
        return Path(path).read_text(encoding="utf-8").strip()
    if found := _kubeconfig_token():
        return found
    if SERVICE_ACCOUNT_TOKEN.exists():
        return SERVICE_ACCOUNT_TOKEN.read_text(encoding="utf-8").strip()
    raise GatewayError(
        "no token for the gateway: pass --token (or NEWFUSE_TOKEN), set NEWFUSE_TOKEN_FILE, or "
        "use a kubeconfig whose user has a token (kubectl create token <sa> "
        "--audience newfuse-gateway)"
    )


def _output(task: Task) -> Any:
    for artifact in task.artifacts:
        if artifact.name == RESULT_ARTIFACT and artifact.parts:
            part = artifact.parts[0]
            return part.text if part.WhichOneof("content") == "text" else MessageToDict(part.data)
    return None


def result_of(task: Task) -> ResultPayload | None:
    """The fleet's result of an ended A2A task (None while it has not ended)."""
    status = _ENDED.get(task.status.state)
    if status is None:
        return None
    meta = MessageToDict(task.metadata)
    error = None
    if status is ResultStatus.FAILED:
        error = " ".join(p.text for p in task.status.message.parts) or None
    return ResultPayload(
        task_id=task.id,
        status=status,
        output=_output(task),
        error=error,
        agent_id=str(meta.get("agentId", "?")),
        revision=meta.get("revision"),
        attempts=int(meta.get("attempts", 1)),
        latency_ms=float(meta.get("latencyMs", 0.0)),
        finished_at=meta.get("finishedAt") or task.status.timestamp.ToDatetime(dt.UTC),
        reason=meta.get("reason"),
    )


def _message(spec: TaskSpec) -> Message:
    message = Message(message_id=spec.task_id or uuid.uuid4().hex, role=Role.ROLE_USER)
    message.metadata.update({SKILL_KEY: spec.handler})
    if isinstance(spec.input, str):
        message.parts.append(Part(text=spec.input))
    else:
        message.parts.append(Part(data=ParseDict(spec.input, Value())))
    return message


def _agent(view: dict[str, Any]) -> StateUpdate:
    metrics = AgentMetrics(
        requests_handled=view.get("requestsHandled", 0),
        tasks_completed=view.get("tasksCompleted", 0),
        tasks_failed=view.get("tasksFailed", 0),
        latency_p95_ms=view.get("latencyP95Ms"),
    )
    state = AgentState(
        id=view["id"],
        status=AgentStatus(view["status"]),
        capabilities=view.get("capabilities", []),
        metrics=metrics,
        revision=view.get("revision"),
    )
    return StateUpdate(
        agent_id=view["id"], state=state, version=view["version"], timestamp=view["heartbeat"]
    )


async def raise_refusal(response: httpx.Response) -> None:
    """Raise the gateway's own words for a 401 or 403 (the SDK's error would drop them)."""
    if response.status_code not in (401, 403):
        return
    await response.aread()
    try:
        message = str(response.json().get("error"))
    except ValueError:
        message = response.text[:300]
    what = "Forbidden" if response.status_code == 403 else "Unauthorized"
    raise GatewayError(f"{what}: the gateway refused the call ({response.status_code}): {message}")


class GatewayClient:
    """The part of TaskClient the CLI's task commands use, through the gateway."""

    def __init__(self, server: str, namespace: str, fleet: str, token: str) -> None:
        """Reach ``namespace/fleet`` on the gateway at ``server`` as the holder of ``token``."""
        self.server, self.namespace, self.fleet = server.rstrip("/"), namespace, fleet
        self.http = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
            event_hooks={"response": [raise_refusal]},
        )
        self._client: Client | None = None

    async def ensure_fleet(self) -> None:
        """Raise FleetNotFoundError unless the gateway serves this fleet."""
        url = a2a_url(self.server, self.namespace, self.fleet)
        try:
            self._client = await create_client(
                url.rstrip("/"), client_config=ClientConfig(httpx_client=self.http, streaming=False)
            )
        except Exception as exc:  # the SDK wraps the card's HTTP status in its own errors
            if "404" in str(exc):
                raise FleetNotFoundError(
                    f"fleet {self.fleet!r} not found in namespace {self.namespace!r} "
                    f"on the gateway {self.server}"
                ) from None
            raise GatewayError(f"{self.server}: {exc}") from exc

    @property
    def client(self) -> Client:
        if self._client is None:
            raise GatewayError("ensure_fleet() first")
        return self._client

    async def submit_many(self, specs: Iterable[TaskSpec]) -> AsyncIterator[list[Submitted]]:
        """Send each task as a message; the gateway answers at once with the task it started."""
        config = SendMessageConfiguration(return_immediately=True)
        for spec in specs:
            request = SendMessageRequest(message=_message(spec), configuration=config)
            async for reply in self.client.send_message(request):
                if reply.HasField("task"):
                    yield [Submitted(reply.task.id, "", created=True)]
                    break

    async def result(self, task_id: str) -> ResultPayload | None:
        """The task's result, None while it runs."""
        return result_of(await self.client.get_task(GetTaskRequest(id=task_id)))

    async def wait(self, task_id: str, timeout: float) -> ResultPayload:
        """Poll the task until it ends; TimeoutError after ``timeout`` seconds."""
        deadline, delay = time.monotonic() + timeout, 0.05
        while (found := await self.result(task_id)) is None:
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no result for task {task_id} after {timeout:g}s")
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.5)
        return found

    async def agents(self) -> list[StateUpdate]:
        """Every agent's latest state: the snapshot that opens the fleet's live feed."""
        url = self.server + live_path(self.namespace, self.fleet) + "/events"
        async with self.http.stream("GET", url) as reply:
            if reply.status_code != 200:
                raise GatewayError(f"{url}: {reply.status_code} {(await reply.aread())[:300]!r}")
            async for line in reply.aiter_lines():
                if line.startswith("data:"):
                    snapshot = json.loads(line.removeprefix("data:"))
                    return [_agent(view) for view in snapshot["agents"]]
        raise GatewayError(f"{url}: the feed ended before its snapshot")

    async def aclose(self) -> None:
        """Close the HTTP connections."""
        if self._client is not None:
            await self._client.close()
        await self.http.aclose()
