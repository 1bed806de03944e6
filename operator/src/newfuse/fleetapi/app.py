"""The gateway's ASGI app: each fleet an A2A agent at `/a2a/<namespace>/<fleet>/`.

The a2a-sdk's JSON-RPC dispatcher does the protocol (methods, errors, `A2A-Version`, SSE); around
it this module finds the fleet the URL names, refuses one the operator has not mirrored to Redis
with a 404, and serves each fleet's Agent Card, built fresh from the fleet's state so that a new
capability shows as a skill without a restart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncGenerator, AsyncIterator
from dataclasses import dataclass
from importlib.metadata import version
from typing import Any, Final

from a2a.server.context import ServerCallContext
from a2a.server.request_handlers.response_helpers import agent_card_to_dict
from a2a.server.routes import DefaultServerCallContextBuilder
from a2a.server.routes.jsonrpc_dispatcher import JsonRpcDispatcher
from a2a.utils.constants import AGENT_CARD_WELL_KNOWN_PATH, VERSION_HEADER
from a2a.utils.errors import A2AError, VersionNotSupportedError
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from redis.exceptions import RedisError
from sse_starlette.sse import EventSourceResponse
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from newfuse.fleetapi.a2amap import agent_card, version_refusal
from newfuse.fleetapi.auth import Authenticator, AuthError, Authorizer, audit, verb_of
from newfuse.fleetapi.fleets import Fleets
from newfuse.fleetapi.liveroutes import LiveEndpoints
from newfuse.fleetapi.memoryroutes import MemoryEndpoints
from newfuse.fleetapi.metrics import CALLS
from newfuse.fleetapi.reviewroutes import ReviewEndpoints
from newfuse.fleetapi.streams import EVENT_ID
from newfuse.fleetapi.tasks import CAPABILITIES, FLEET, PROTOCOL, USER, FleetTaskHandler
from newfuse.fleetapi.webhooks import Pusher
from newfuse.wire.endpoints import A2A_PREFIX, a2a_url

_VERSION: Final = version("newfuse")


def _event_id(event: Any) -> str | None:
    """The id a streamed JSON-RPC response carries in its event's metadata, if any."""
    if not isinstance(event, dict) or "event" in event:  # an error event: nothing to resume
        return None
    result = json.loads(event.get("data", "{}")).get("result", {})
    for payload in result.values() if isinstance(result, dict) else ():
        found = payload.get("metadata", {}).get(EVENT_ID) if isinstance(payload, dict) else None
        if isinstance(found, str):
            return found
    return None


class _Dispatcher(JsonRpcDispatcher):
    """The SDK's dispatcher, with each streamed event's id as its SSE `id:` field.

    Browsers' EventSource and other SSE clients then send `Last-Event-ID` on reconnect by
    themselves; the a2a-sdk client reads the same id from the event's metadata.
    """

    def _create_response(
        self,
        context: ServerCallContext,
        handler_result: AsyncGenerator[dict[str, Any]] | dict[str, Any],
    ) -> Response:
        response = super()._create_response(context, handler_result)
        if isinstance(response, EventSourceResponse):
            inner = response.body_iterator

            async def with_ids() -> AsyncIterator[Any]:
                async for event in inner:
                    found = _event_id(event) if isinstance(event, dict) else None
                    yield {**event, "id": found} if isinstance(event, dict) and found else event

            response.body_iterator = with_ids()
        return response

    def refuse(self, request_id: Any, error: A2AError) -> Response:
        """The JSON-RPC error response to request ``request_id``."""
        return self._generate_error_response(request_id, error)


class _FleetContext(DefaultServerCallContextBuilder):
    """Hands the handler the fleet that `_with_fleet` found for the request."""

    def build(self, request: Request) -> ServerCallContext:
        context = super().build(request)
        context.state[FLEET] = request.state.fleet
        context.state[CAPABILITIES] = request.state.capabilities
        context.state[PROTOCOL] = request.state.protocol_version
        context.state[USER] = getattr(request.state, "user", None)
        return context


def _not_found(namespace: str, fleet: str) -> Response:
    return JSONResponse(
        {"error": f"no fleet {fleet!r} in namespace {namespace!r} (or no operator runs for it)"},
        status_code=404,
    )


def _refused(error: AuthError) -> Response:
    headers = {"WWW-Authenticate": 'Bearer realm="newfuse"'} if error.status == 401 else {}
    return JSONResponse({"error": error.message}, status_code=error.status, headers=headers)


async def _body(request: Request) -> dict[str, Any]:
    """The JSON-RPC request as a dict ({} if it is not one: the dispatcher says what is wrong)."""
    try:
        body = await request.json()  # Starlette keeps the body: the dispatcher reads it again
    except ValueError:
        return {}
    return body if isinstance(body, dict) else {}


async def _method(request: Request) -> str:
    return str((await _body(request)).get("method", ""))


@dataclass(frozen=True)
class Guard:
    """Who may call: the token's user, then RBAC on the fleet's tasks."""

    authenticator: Authenticator
    authorizer: Authorizer

    async def admit(self, request: Request, namespace: str, fleet: str) -> Response | None:
        """None if the caller may go on (its user in ``request.state.user``); else the refusal."""
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        try:
            if scheme.lower() != "bearer" or not token.strip():
                raise AuthError(401, "a bearer token is required (Authorization: Bearer <JWT>)")
            user = await self.authenticator.identify(token.strip())
            method = await _method(request)
            await self.authorizer.check(user, verb_of(method), namespace, fleet)
        except AuthError as exc:
            return _refused(exc)
        request.state.user = user
        audit.info(
            "%s %s on %s/%s", user.username, method, namespace, fleet,
            extra={"user": user.username, "method": method, "namespace": namespace,
                   "fleet": fleet},
        )  # fmt: skip
        return None


@dataclass(frozen=True)
class _Endpoints:
    """The gateway's HTTP endpoints over its fleets."""

    fleets: Fleets
    dispatcher: _Dispatcher
    public_url: str | None
    guard: Guard | None

    async def _found(self, request: Request) -> bool:
        namespace, name = request.path_params["namespace"], request.path_params["fleet"]
        found = await self.fleets.lookup(namespace, name)
        if found is None:
            return False
        request.state.fleet, request.state.capabilities = found.fleet, found.capabilities
        request.state.protocol_version = found.protocol_version
        return True

    async def rpc(self, request: Request) -> Response:
        response = await self._rpc(request)
        CALLS.labels(str(response.status_code)).inc()
        return response

    async def _rpc(self, request: Request) -> Response:
        namespace, name = request.path_params["namespace"], request.path_params["fleet"]
        if self.guard is not None and (refused := await self.guard.admit(request, namespace, name)):
            return refused  # before the lookup: who may not call learns nothing of the fleet
        if not await self._found(request):
            return _not_found(namespace, name)
        refusal = version_refusal(
            request.headers.get(VERSION_HEADER), request.state.protocol_version
        )
        if refusal is not None:
            request_id = (await _body(request)).get("id")
            return self.dispatcher.refuse(request_id, VersionNotSupportedError(message=refusal))
        return await self.dispatcher.handle_requests(request)

    async def card(self, request: Request) -> Response:
        namespace, name = request.path_params["namespace"], request.path_params["fleet"]
        if not await self._found(request):
            return _not_found(namespace, name)
        url = a2a_url(self.public_url or str(request.base_url), namespace, name)
        capabilities, bearer = request.state.capabilities, self.guard is not None
        built = agent_card(
            namespace,
            name,
            capabilities,
            url,
            _VERSION,
            bearer=bearer,
            protocol_version=request.state.protocol_version,
        )
        return JSONResponse(agent_card_to_dict(built), headers={"Cache-Control": "no-cache"})

    async def healthz(self, _: Request) -> Response:
        return PlainTextResponse("ok")

    async def readyz(self, _: Request) -> Response:
        try:
            await self.fleets.client.ping()
        except (RedisError, OSError) as exc:
            return PlainTextResponse(f"redis: {exc}", status_code=503)
        return PlainTextResponse("ok")


async def _metrics(_: Request) -> Response:
    """Prometheus exposition at exactly /metrics (a Mount would redirect it to /metrics/)."""
    return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)


def create_app(
    fleets: Fleets,
    handler: FleetTaskHandler,
    public_url: str | None = None,
    guard: Guard | None = None,
    pusher: Pusher | None = None,
) -> Starlette:
    """The gateway app over ``fleets``; cards name ``public_url`` (default: the request's URL).

    Without ``guard`` anybody who reaches the gateway may do anything (NEWFUSE_GATEWAY_AUTH=none).
    """
    dispatcher = _Dispatcher(request_handler=handler, context_builder=_FleetContext())
    endpoints = _Endpoints(fleets, dispatcher, public_url, guard)

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        delivering = asyncio.create_task(pusher.run()) if pusher is not None else None
        yield
        if delivering is not None and pusher is not None:
            delivering.cancel()
            await pusher.aclose()
        await fleets.aclose()

    identity = None if guard is None else (guard.authenticator, guard.authorizer)
    live = LiveEndpoints(fleets, identity)
    routes = [
        *live.routes(),
        *ReviewEndpoints(fleets, identity).routes(),
        *MemoryEndpoints(fleets, identity).routes(),
        Route("/healthz", endpoints.healthz),
        Route("/readyz", endpoints.readyz),
        Route("/metrics", _metrics),
        Mount(
            A2A_PREFIX + "/{namespace}/{fleet}",
            routes=[
                Route("/", endpoints.rpc, methods=["POST"]),
                Route(AGENT_CARD_WELL_KNOWN_PATH, endpoints.card, methods=["GET"]),
            ],
        ),
    ]
    return Starlette(routes=routes, lifespan=lifespan)
