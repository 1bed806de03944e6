"""A stub model gateway on 127.0.0.1 for the gateway client's tests, and a fake clock and sleep.

The stub is a real HTTP server (aiohttp) answering from a script of replies, so timeouts, retries
and the circuit breaker are exercised through httpx as in production; it counts the requests it
gets, which is how "fails fast without touching the network" is checked.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from aiohttp import web
from aiohttp.test_utils import TestServer

MODEL = "stub-model"
USAGE = {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
# The Retry-After of Reply.TOO_MANY_RETRY_LATER: longer than any backoff cap or recovery time.
RETRY_LATER_SECONDS = 120.0


class Reply(StrEnum):
    """What the stub answers to one request."""

    OK = "ok"
    SERVER_ERROR = "500"
    UNAVAILABLE = "503"
    TOO_MANY = "429"
    TOO_MANY_RETRY_AFTER = "429 with Retry-After"
    TOO_MANY_RETRY_LATER = "429 with a long Retry-After"
    BAD_REQUEST = "400"
    NOT_FOUND = "404"
    NOT_JSON = "not json"
    SLOW = "slower than the client's timeout"
    HOLD = "wait until released, then ok"


@dataclass
class Stub:
    """The stub's script of replies (the last one repeats) and what it received."""

    replies: list[Reply]
    url: str = ""
    requests: int = 0
    bodies: list[dict[str, Any]] = field(default_factory=list)
    authorization: list[str | None] = field(default_factory=list)
    release: asyncio.Event = field(default_factory=asyncio.Event)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)
    # The usage each answer reports (a test may make one model cost more than another).
    usage: dict[str, int] = field(default_factory=lambda: dict(USAGE))
    # What the model says to the messages (default: "echo: <last message>").
    content: Callable[[list[dict[str, str]]], str] | None = None

    def next_reply(self) -> Reply:
        return self.replies.pop(0) if len(self.replies) > 1 else self.replies[0]


def _completion(
    messages: list[dict[str, str]], usage: dict[str, int], content: str | None = None
) -> dict[str, Any]:
    return {
        "id": "cmpl-1",
        "model": MODEL,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": content or f"echo: {messages[-1]['content']}",
                },
            }
        ],
        "usage": usage,
    }


@contextlib.asynccontextmanager
async def stub_gateway(*replies: Reply) -> AsyncIterator[Stub]:
    stub = Stub(list(replies))

    async def completions(request: web.Request) -> web.StreamResponse:
        # Counted before anything is awaited: a client that gives up early still made a request.
        stub.requests += 1
        reply = stub.next_reply()
        body = await request.json()
        stub.bodies.append(body)
        stub.authorization.append(request.headers.get("Authorization"))
        stub.arrived.set()
        if reply in (Reply.SLOW, Reply.HOLD):
            # Returns early when the test ends, so the server never waits on a sleeping handler.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stub.release.wait(), 5 if reply is Reply.HOLD else 1)
        status = {
            Reply.SERVER_ERROR: 500,
            Reply.UNAVAILABLE: 503,
            Reply.TOO_MANY: 429,
            Reply.TOO_MANY_RETRY_AFTER: 429,
            Reply.TOO_MANY_RETRY_LATER: 429,
            Reply.BAD_REQUEST: 400,
            Reply.NOT_FOUND: 404,
        }.get(reply)
        if status is not None:
            headers = {
                Reply.TOO_MANY_RETRY_AFTER: {"Retry-After": "0.05"},
                Reply.TOO_MANY_RETRY_LATER: {"Retry-After": f"{RETRY_LATER_SECONDS:g}"},
            }.get(reply, {})
            return web.json_response({"error": reply.value}, status=status, headers=headers)
        if reply is Reply.NOT_JSON:
            return web.Response(text="<html>login</html>", content_type="text/html")
        said = stub.content(body["messages"]) if stub.content is not None else None
        return web.json_response(_completion(body["messages"], stub.usage, said))

    app = web.Application()
    app.router.add_post("/v1/chat/completions", completions)
    server = TestServer(app, host="127.0.0.1")
    await server.start_server()
    stub.url = str(server.make_url("/v1"))
    try:
        yield stub
    finally:
        stub.release.set()
        await server.close()


class FakeClock:
    """A monotonic clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingSleep:
    """Records the backoff waits and yields to the loop without waiting."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        await asyncio.sleep(0)
