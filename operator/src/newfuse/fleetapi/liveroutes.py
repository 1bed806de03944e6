"""The live feed's endpoints: a WebSocket and an SSE stream per fleet, and the page that shows it.

- `GET /live/<namespace>/<fleet>` (WebSocket): the feed as JSON text frames;
- `GET /live/<namespace>/<fleet>/events` (SSE): the same feed, one SSE event per feed event;
- `GET /live/<namespace>/<fleet>` (HTTP): a page that draws the feed (it holds no data itself).

Browsers cannot set headers on a WebSocket or an EventSource, so the bearer token may also come as
the `access_token` query parameter (RFC 6750, section 2.3). Watching needs `watch` on the
NewFuseAgent; results come only to callers RBAC lets `get` the fleet's tasks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib.resources import files
from typing import Any, Final

from sse_starlette.sse import EventSourceResponse
from starlette.requests import HTTPConnection, Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import BaseRoute, Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from newfuse.fleetapi.auth import Authenticator, AuthError, Authorizer, audit
from newfuse.fleetapi.feed import SlowConsumerError, Watcher
from newfuse.fleetapi.fleets import Fleet, Fleets
from newfuse.wire.endpoints import live_path

# Close codes. A refused caller is accepted, then closed with a code and a reason: a browser never
# sees the HTTP status of a refused handshake, only 1006. 4401/4403/4404 mirror HTTP's (the
# private range of RFC 6455 section 7.4.2, as graphql-ws uses it); 1013 "try again later": the
# client stopped reading, fell a whole queue behind, and may come back.
CLOSE_UNAUTHENTICATED: Final = 4401
CLOSE_FORBIDDEN: Final = 4403
CLOSE_NOT_FOUND: Final = 4404
CLOSE_SLOW: Final = 1013
# A close frame to a client that does not read may never go out; give up on it after this. Long
# enough for a client that reads again soon after the cut to drain what was queued ahead of the
# frame and get its code (1 s lost it on a loaded machine), short enough that a dead one costs
# nothing for long.
CLOSE_TIMEOUT: Final = 5.0
SSE_SEND_TIMEOUT: Final = 10.0
_PAGE: Final = files("newfuse.fleetapi").joinpath("live.html")


def _token(connection: HTTPConnection) -> str:
    scheme, _, token = connection.headers.get("authorization", "").partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return token.strip()
    return connection.query_params.get("access_token", "").strip()


@dataclass(frozen=True)
class LiveEndpoints:
    """The live feed of every fleet the gateway serves."""

    fleets: Fleets
    identity: tuple[Authenticator, Authorizer] | None  # None: anybody may watch

    async def _admit(self, connection: HTTPConnection, namespace: str, name: str) -> bool:
        """Whether the caller may see results; AuthError if it may not watch at all."""
        if self.identity is None:
            return True
        authenticator, authorizer = self.identity
        token = _token(connection)
        if not token:
            raise AuthError(401, "a bearer token is required (header or access_token)")
        user = await authenticator.identify(token)
        await authorizer.check(user, "watch", namespace, name, subresource="")
        try:
            await authorizer.check(user, "get", namespace, name)
            results = True
        except AuthError:
            results = False
        audit.info(
            "%s watch on %s/%s", user.username, namespace, name,
            extra={"user": user.username, "method": "watch", "namespace": namespace,
                   "fleet": name, "results": results},
        )  # fmt: skip
        return results

    async def _fleet(self, connection: HTTPConnection) -> tuple[Fleet | None, bool]:
        """The fleet the path names (None: not found); AuthError if the caller may not watch."""
        namespace, name = connection.path_params["namespace"], connection.path_params["fleet"]
        results = await self._admit(connection, namespace, name)
        found = await self.fleets.lookup(namespace, name)
        return (None if found is None else found.fleet), results

    async def websocket(self, websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            fleet, results = await self._fleet(websocket)
        except AuthError as exc:
            code = CLOSE_UNAUTHENTICATED if exc.status == 401 else CLOSE_FORBIDDEN
            await websocket.close(code, _reason(exc.message))
            return
        if fleet is None:
            await websocket.close(CLOSE_NOT_FOUND, "no such fleet")
            return
        async with fleet.feed.watch(results=results) as watcher:
            sender = asyncio.create_task(_send_all(websocket, watcher))
            watcher.on_cut = sender.cancel
            receiver = asyncio.create_task(_until_closed(websocket))
            await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
            for task in (sender, receiver):
                task.cancel()
        if watcher.cut:
            with contextlib.suppress(Exception):
                reason = "slow consumer: fell a whole queue behind"
                await asyncio.wait_for(websocket.close(CLOSE_SLOW, reason), CLOSE_TIMEOUT)

    async def events(self, request: Request) -> Response:
        try:
            fleet, results = await self._fleet(request)
        except AuthError as exc:
            return JSONResponse({"error": exc.message}, status_code=exc.status)
        if fleet is None:
            return JSONResponse({"error": "no such fleet"}, status_code=404)

        async def stream() -> AsyncIterator[dict[str, Any]]:
            async with fleet.feed.watch(results=results) as watcher:
                with contextlib.suppress(SlowConsumerError):
                    while True:
                        event = await watcher.next()
                        yield {"event": event["type"], "data": json.dumps(event)}

        return EventSourceResponse(stream(), ping=15, send_timeout=SSE_SEND_TIMEOUT)

    async def page(self, _: Request) -> Response:
        page = _PAGE.read_text(encoding="utf-8")
        return HTMLResponse(page, headers={"Cache-Control": "no-cache"})

    def routes(self) -> list[BaseRoute]:
        """The routes to mount at the app's root."""
        path = live_path("{namespace}", "{fleet}")
        return [
            WebSocketRoute(path, self.websocket),
            Route(path, self.page, methods=["GET"]),
            Route(path + "/events", self.events, methods=["GET"]),
        ]


def _reason(message: str) -> str:
    """``message`` cut to the 123 bytes of UTF-8 a close frame's reason may take."""
    return message.encode()[:123].decode(errors="ignore")


async def _send_all(websocket: WebSocket, watcher: Watcher) -> None:
    with contextlib.suppress(SlowConsumerError, WebSocketDisconnect, RuntimeError):
        while True:
            await websocket.send_text(json.dumps(await watcher.next()))


async def _until_closed(websocket: WebSocket) -> None:
    """Read (and drop) what the client sends until it goes away."""
    while (await websocket.receive())["type"] != "websocket.disconnect":
        pass
