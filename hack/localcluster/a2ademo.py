"""The end of `make demo`: the sample fleet answers as an A2A agent through the fleet API gateway.

It uses the official a2a-sdk client, as a user's agent would.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable

from a2a.client import ClientConfig, create_client
from a2a.types.a2a_pb2 import Message, Part, Role, SendMessageRequest, Task, TaskState

from newfuse.wire.endpoints import a2a_url


async def _ask(url: str, text: str) -> Task:
    client = await create_client(url.rstrip("/"), client_config=ClientConfig(streaming=False))
    try:
        message = Message(message_id=uuid.uuid4().hex, role=Role.ROLE_USER, parts=[Part(text=text)])
        message.metadata.update({"skill": "echo"})
        [event] = [e async for e in client.send_message(SendMessageRequest(message=message))]
        return event.task
    finally:
        await client.close()


def show_fleet_api(
    gateway_url: str, namespace: str, fleet: str, log: Callable[[str], None]
) -> None:
    """Send one message to ``fleet`` through the gateway and print what came back."""
    url = a2a_url(gateway_url, namespace, fleet)
    log(f"the fleet is an A2A v1.0 agent too; its Agent Card: {url}.well-known/agent-card.json")
    task = asyncio.run(_ask(url, "hello from the fleet API"))
    output = " ".join(p.text for a in task.artifacts for p in a.parts)
    state = TaskState.Name(task.status.state)
    log(f"SendMessage via the gateway: task {task.id} {state}: {output!r}")
