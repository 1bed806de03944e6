"""The end of `make demo`: the sample fleet answers as an A2A agent through the fleet API gateway.

It uses the official a2a-sdk client, as a user's agent would, with the token of a ServiceAccount
that a Role lets send tasks to the fleet (the gateway's default: RBAC decides).
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from a2a.client import ClientConfig, create_client
from a2a.types.a2a_pb2 import Message, Part, Role, SendMessageRequest, Task, TaskState

from newfuse.wire.endpoints import a2a_url, live_path

CLIENT = "demo-client"
# What the chart's task-submitter ClusterRole grants, as a Role of the demo namespace.
_RBAC = """
apiVersion: v1
kind: ServiceAccount
metadata: {{name: {name}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: {name}}}
rules:
  - apiGroups: [newfuse.io]
    resources: [newfuseagents/tasks]
    verbs: [create, get]
  - apiGroups: [newfuse.io]
    resources: [newfuseagents]
    verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: {name}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: {name}}}
subjects: [{{kind: ServiceAccount, name: {name}}}]
"""


async def _ask(url: str, token: str, text: str) -> Task:
    http = httpx.AsyncClient(headers={"Authorization": f"Bearer {token}"}, timeout=60)
    config = ClientConfig(streaming=False, httpx_client=http)
    client = await create_client(url.rstrip("/"), client_config=config)
    try:
        message = Message(message_id=uuid.uuid4().hex, role=Role.ROLE_USER, parts=[Part(text=text)])
        message.metadata.update({"skill": "echo"})
        [event] = [e async for e in client.send_message(SendMessageRequest(message=message))]
        return event.task
    finally:
        await client.close()
        await http.aclose()


def show_fleet_api(
    k: Callable[..., str], gateway_url: str, namespace: str, fleet: str, log: Callable[[str], None]
) -> None:
    """Send one message to ``fleet`` through the gateway and print what came back."""
    url = a2a_url(gateway_url, namespace, fleet)
    log(f"the fleet is an A2A v1.0 agent too; its Agent Card: {url}.well-known/agent-card.json")
    k("apply", "-n", namespace, "-f", "-", stdin=_RBAC.format(name=CLIENT))
    token = k("create", "token", CLIENT, "-n", namespace, "--audience", "newfuse-gateway").strip()
    log(f"calling it as ServiceAccount {CLIENT} (`kubectl create token {CLIENT} --audience "
        "newfuse-gateway`)")  # fmt: skip
    task = asyncio.run(_ask(url, token, "hello from the fleet API"))
    output = " ".join(p.text for a in task.artifacts for p in a.parts)
    state = TaskState.Name(task.status.state)
    log(f"SendMessage via the gateway: task {task.id} {state}: {output!r}")
    log("the same agents through the gateway, as a user without Redis credentials sees them:")
    newfuse = str(Path(sys.executable).with_name("newfuse"))
    env = {k: v for k, v in os.environ.items() if k != "NEWFUSE_REDIS_URL"}
    subprocess.run(
        [newfuse, "--server", gateway_url, "--token", token, "agents", fleet, "-n", namespace],
        check=True, env=env,
    )  # fmt: skip
    log(f"live page (this token is valid 1 h): {gateway_url}{live_path(namespace, fleet)}"
        f"#token={token}")  # fmt: skip
