"""A fleet's shared memory over HTTP: remember a text, search by meaning, forget by id.

- `POST /fleets/<namespace>/<fleet>/memory` `{"text", "metadata"?, "id"?, "ttlSeconds"?}`: 201
  `{"id", "created": true}` (200 and `created: false` when the id was already stored);
- `GET /fleets/<namespace>/<fleet>/memory/search?q=&k=&where=key:value` (`where` repeatable) or
  `POST .../memory/search` `{"q", "k"?, "where"?: {key: value}}`: `{"results": [{"id", "score",
  "text", "metadata", "revision"}]}`, best first;
- `DELETE /fleets/<namespace>/<fleet>/memory/<id>`: 204, or 404 if there was no such memory.

A bad request is a 400 whose message names the field. RBAC is asked as the review routes ask it,
on the fleet's `memory` subresource: `get` to search, `create` to remember, `delete` to forget.
Writes come from the gateway as the fleet's operator (revision `gateway`, never quarantined).

Embedding is heavy (a model of about 23 MB, CPU per call), so each model is loaded once for the
whole gateway and shared by every fleet; each fleet gets one FleetMemory, made on its first call
(only for fleets that exist) and kept, with its in-process index.
"""

from __future__ import annotations

import json
import math
import threading
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from newfuse.adapters.memoryport import MemoryFullError
from newfuse.fleetapi.auth import AuthError, Identity, admit, audit
from newfuse.fleetapi.fleets import Fleets
from newfuse.wire.keys import FleetKeys
from newfuse.wire.memory import DEFAULT_K, MAX_K, MAX_TEXT, Scalar

if TYPE_CHECKING:  # loaded on the first memory call: a gateway without them need not pay
    from newfuse.adapters.embedder import Embedder
    from newfuse.adapters.fleetmemory import FleetMemory

FLEETS_PREFIX: Final = "/fleets"
MEMORY_SUBRESOURCE: Final = "memory"
REVISION: Final = "gateway"  # the revision the API's writes carry; the fleet trusts its operator
MAX_ID: Final = 128
MAX_METADATA: Final = 64  # keys per memory


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


class BadRequestError(ValueError):
    """The request is malformed; the message names the field."""


def _text(value: Any, name: str) -> str:
    if not isinstance(value, str):
        raise BadRequestError(f"{name}: a string is required, got {type(value).__name__}")
    if not value.strip():
        raise BadRequestError(f"{name}: must not be empty")
    if len(value) > MAX_TEXT:
        raise BadRequestError(f"{name}: at most {MAX_TEXT} characters, got {len(value)}")
    return value


def _scalar(value: Any, name: str) -> Scalar:
    if isinstance(value, float) and not math.isfinite(value):
        raise BadRequestError(f"{name}: a finite number, got {value}")
    if not isinstance(value, str | int | float | bool):
        kind = "null" if value is None else type(value).__name__
        raise BadRequestError(f"{name}: a string, number or boolean, got {kind}")
    return value


def _metadata(value: Any, name: str = "metadata") -> dict[str, Scalar]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise BadRequestError(f"{name}: an object of key: value, got {type(value).__name__}")
    if len(value) > MAX_METADATA:
        raise BadRequestError(f"{name}: at most {MAX_METADATA} keys, got {len(value)}")
    return {str(k): _scalar(v, f"{name}.{k}") for k, v in value.items()}


def _k(value: Any) -> int:
    if isinstance(value, str):
        try:
            value = int(value)
        except ValueError:
            raise BadRequestError(f"k: a whole number, got {value!r}") from None
    if isinstance(value, bool) or not isinstance(value, int):
        raise BadRequestError(f"k: a whole number, got {value!r}")
    if not 1 <= value <= MAX_K:
        raise BadRequestError(f"k: from 1 to {MAX_K}, got {value}")
    return value


def _ttl(value: Any) -> float | None:
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise BadRequestError(f"ttlSeconds: a number of seconds, got {value!r}")
    if value <= 0:
        raise BadRequestError(f"ttlSeconds: more than 0, got {value}")
    return float(value)


def _memory_id(value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str) or not 1 <= len(value) <= MAX_ID:
        raise BadRequestError(f"id: a string of 1 to {MAX_ID} characters, got {value!r}")
    return value


@dataclass(frozen=True)
class Write:
    """What a POST asks to remember."""

    text: str
    metadata: dict[str, Scalar]
    id: str | None
    ttl_seconds: float | None


def write_of(body: Any) -> Write:
    """The write a POST body asks for; BadRequestError naming the field that is wrong."""
    if not isinstance(body, dict):
        raise BadRequestError("body: a JSON object with a text is required")
    unknown = set(body) - {"text", "metadata", "id", "ttlSeconds"}
    if unknown:
        raise BadRequestError(f"{sorted(unknown)[0]}: unknown field")
    return Write(
        _text(body.get("text"), "text"),
        _metadata(body.get("metadata")),
        _memory_id(body.get("id")),
        _ttl(body.get("ttlSeconds")),
    )


def _where_value(text: str) -> Scalar:
    """A `where` value from a query string: a JSON number or boolean, else the text itself."""
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str | int | float | bool) else text


def search_of(query: Mapping[str, Any], where: list[str]) -> tuple[str, int, dict[str, Scalar]]:
    """(query, k, where) of a search's parameters; BadRequestError naming the field."""
    pairs: dict[str, Scalar] = {}
    for item in where:
        key, sep, value = item.partition(":")
        if not sep or not key:
            raise BadRequestError(f"where: key:value, got {item!r}")
        pairs[key] = _where_value(value)
    return _text(query.get("q"), "q"), _k(query.get("k", DEFAULT_K)), pairs


def search_body_of(body: Any) -> tuple[str, int, dict[str, Scalar]]:
    """(query, k, where) of a POST search body; BadRequestError naming the field."""
    if not isinstance(body, dict):
        raise BadRequestError("body: a JSON object with a q is required")
    found = _text(body.get("q"), "q"), _k(body.get("k", DEFAULT_K))
    return (*found, _metadata(body.get("where"), "where"))


class SharedEmbedders:
    """Each embedding model loaded once for every fleet (FleetMemory calls it in a thread)."""

    def __init__(self, load: Callable[[str], Embedder] | None = None) -> None:
        """Load models with ``load`` (default: newfuse.adapters.embedder.embedder_for)."""
        self._load = load
        self._loaded: dict[str, Embedder] = {}
        self._lock = threading.Lock()

    def __call__(self, model: str) -> Embedder:
        with self._lock:
            if model not in self._loaded:
                if self._load is None:
                    from newfuse.adapters.embedder import embedder_for

                    self._load = embedder_for
                self._loaded[model] = self._load(model)
            return self._loaded[model]


@dataclass
class MemoryEndpoints:
    """The shared memory of every fleet the gateway serves."""

    fleets: Fleets
    identity: Identity | None  # None: anybody may use it
    embedders: Callable[[str], Embedder] = field(default_factory=SharedEmbedders)
    _memories: dict[tuple[str, str], FleetMemory] = field(default_factory=dict)

    def routes(self) -> list[BaseRoute]:
        """The routes, under FLEETS_PREFIX."""
        base = FLEETS_PREFIX + "/{namespace}/{fleet}/memory"
        return [
            Route(base, self.remember, methods=["POST"]),
            Route(f"{base}/search", self.search, methods=["GET", "POST"]),
            Route(base + "/{memory}", self.forget, methods=["DELETE"]),
        ]

    async def _admit(self, request: Request, verb: str) -> Response | None:
        """None if the caller may go on (`request.state.memory`, `.user`); else the refusal."""
        namespace, name = request.path_params["namespace"], request.path_params["fleet"]
        try:
            user = await admit(self.identity, request, verb, MEMORY_SUBRESOURCE)
        except AuthError as exc:
            return _error(exc.status, exc.message)
        request.state.user = user or "system:anonymous"
        if await self.fleets.lookup(namespace, name) is None:
            self._memories.pop((namespace, name), None)
            return _error(404, f"no fleet {name!r} in namespace {namespace!r}")
        request.state.memory = self._memory(namespace, name)
        return None

    def _memory(self, namespace: str, name: str) -> FleetMemory:
        from newfuse.adapters.fleetmemory import FleetMemory
        from newfuse.adapters.redismemory import RedisMemory

        found = self._memories.get((namespace, name))
        if found is None:
            backend = RedisMemory(self.fleets.client, FleetKeys(namespace, name))
            found = FleetMemory(backend, REVISION, embedders=self.embedders)
            self._memories[(namespace, name)] = found
        return found

    async def remember(self, request: Request) -> Response:
        from newfuse.adapters.fleetmemory import Memo

        if refused := await self._admit(request, "create"):
            return refused
        try:
            write = write_of(await _json(request))
        except BadRequestError as exc:
            return _error(400, str(exc))
        memo = Memo(write.text, write.metadata, write.id or uuid.uuid4().hex, write.ttl_seconds)
        try:
            created = await request.state.memory.remember_many([memo]) > 0
        except MemoryFullError as exc:
            return _error(409, str(exc))
        _audit(request, "remembered", str(memo.id))
        return JSONResponse(
            {"id": memo.id, "created": created}, status_code=201 if created else 200
        )

    async def search(self, request: Request) -> Response:
        if refused := await self._admit(request, "get"):
            return refused
        try:
            if request.method == "POST":
                query, k, where = search_body_of(await _json(request))
            else:
                params = request.query_params
                query, k, where = search_of(params, params.getlist("where"))
        except BadRequestError as exc:
            return _error(400, str(exc))
        try:
            found = await request.state.memory.recall(query, k, where or None)
        except ValueError as exc:  # the fleet's model changed under the call: ask again
            return _error(503, f"the fleet's memory model changed, retry: {exc}")
        return JSONResponse({"results": [hit.to_json() for hit in found]})

    async def forget(self, request: Request) -> Response:
        if refused := await self._admit(request, "delete"):
            return refused
        memory_id = request.path_params["memory"]
        if not await request.state.memory.forget(memory_id):
            return _error(404, f"no memory {memory_id!r}")
        _audit(request, "forgot", memory_id)
        return Response(status_code=204)


async def _json(request: Request) -> Any:
    try:
        return await request.json()
    except ValueError:
        raise BadRequestError("body: not valid JSON") from None


def _audit(request: Request, what: str, memory_id: str) -> None:
    user, p = request.state.user, request.path_params
    audit.info(
        "%s %s memory %s of %s/%s", user, what, memory_id, p["namespace"], p["fleet"],
        extra={"user": user, "memory": memory_id, "action": what,
               "namespace": p["namespace"], "fleet": p["fleet"]},
    )  # fmt: skip
