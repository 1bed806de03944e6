"""The fleet API's memory routes: the gateway app in process (httpx ASGI) over the real Redis.

The API server is stood in for by an object answering issuer discovery and SubjectAccessReviews
(as in tests/unit/test_fleetapi_auth.py): a reader may `get` the fleet's `memory`, a writer may
also `create` and `delete` it. A write is found by a search and gone after its deletion; a bad
request names its field; a reader cannot write.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import jwt
import pytest
import pytest_asyncio
import redis
from cryptography.hazmat.primitives.asymmetric import rsa

from clitool import mirrored_fleet
from harness import RedisHandle
from newfuse.adapters.kubeauth import ReviewedUser
from newfuse.adapters.redis_connect import connect
from newfuse.fleetapi.app import Guard, create_app
from newfuse.fleetapi.auth import Authenticator, Authorizer
from newfuse.fleetapi.fleets import Fleets
from newfuse.fleetapi.tasks import FleetTaskHandler
from newfuse.wire.keys import FleetKeys

ISSUER = "https://kubernetes.default.svc.cluster.local"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
VERBS = {"reader": {"get"}, "writer": {"get", "create", "delete"}}

pytestmark = pytest.mark.asyncio


class FakeKube:
    """Issuer discovery and SubjectAccessReviews answered from memory."""

    def __init__(self) -> None:
        self.asked: list[tuple[str, str, str]] = []

    def issuer(self) -> str:
        return ISSUER

    def jwks(self) -> dict[str, Any]:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(KEY.public_key()))
        return {"keys": [{**public, "kid": "k1", "alg": "RS256", "use": "sig"}]}

    def review_token(self, token: str, audience: str) -> ReviewedUser | None:
        return None

    def may(
        self, user: ReviewedUser, verb: str, namespace: str, fleet: str, subresource: str = ""
    ) -> tuple[bool, str]:
        name = user.username.rsplit(":", 1)[-1]
        self.asked.append((name, verb, subresource))
        return subresource == "memory" and verb in VERBS.get(name, set()), "no rule"


def _token(name: str) -> str:
    now = int(time.time())
    account = {"namespace": "team", "serviceaccount": {"name": name, "uid": name}}
    body = {"iss": ISSUER, "sub": f"system:serviceaccount:team:{name}", "aud": ["newfuse-gateway"],
            "iat": now, "exp": now + 600, "kubernetes.io": account}  # fmt: skip
    return jwt.encode(body, KEY, algorithm="RS256", headers={"kid": "k1"})


@pytest.fixture
def fleet(redis_server: RedisHandle, redis_client: redis.Redis) -> Iterator[FleetKeys]:
    yield from mirrored_fleet(redis_server, redis_client, "memapi")


@pytest_asyncio.fixture
async def api(redis_server: RedisHandle) -> AsyncIterator[tuple[httpx.AsyncClient, FakeKube]]:
    kube = FakeKube()
    guard = Guard(Authenticator(kube, "newfuse-gateway"), Authorizer(kube))  # type: ignore[arg-type]
    fleets = Fleets(connect(redis_server.url, timeout=10))
    app = create_app(fleets, FleetTaskHandler(), guard=guard)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
        yield client, kube
    await fleets.aclose()


def _as(name: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {_token(name)}"}


def _base(keys: FleetKeys) -> str:
    return f"/fleets/{keys.namespace}/{keys.fleet}/memory"


async def test_write_search_delete(
    api: tuple[httpx.AsyncClient, FakeKube], fleet: FleetKeys
) -> None:
    client, _ = api
    base, writer = _base(fleet), _as("writer")
    text = "The nightly backup job failed because the disk was full"
    body = {"text": text, "metadata": {"team": "ops", "sev": 2}, "id": "b1", "ttlSeconds": 3600}
    made = await client.post(base, json=body, headers=writer)
    assert made.status_code == 201, made.text
    assert made.json() == {"id": "b1", "created": True}
    again = await client.post(base, json=body, headers=writer)
    assert (again.status_code, again.json()["created"]) == (200, False)
    other = await client.post(base, json={"text": "Lunch is at noon on Fridays"}, headers=writer)
    assert other.status_code == 201

    found = await client.get(
        f"{base}/search", params={"q": "backup failure, no space left", "k": 1}, headers=writer
    )
    assert found.status_code == 200, found.text
    [hit] = found.json()["results"]
    assert (hit["id"], hit["text"], hit["revision"]) == ("b1", text, "gateway")
    assert hit["metadata"] == {"team": "ops", "sev": 2}
    assert isinstance(hit["score"], float)
    filtered = await client.post(
        f"{base}/search", json={"q": "backup", "where": {"sev": 2}}, headers=_as("reader")
    )
    assert [r["id"] for r in filtered.json()["results"]] == ["b1"]
    by_query = await client.get(
        f"{base}/search", params=[("q", "backup"), ("where", "team:ops")], headers=writer
    )
    assert [r["id"] for r in by_query.json()["results"]] == ["b1"]

    gone = await client.delete(f"{base}/b1", headers=writer)
    assert gone.status_code == 204
    assert (await client.delete(f"{base}/b1", headers=writer)).status_code == 404
    after = await client.get(f"{base}/search", params={"q": "backup", "k": 5}, headers=writer)
    assert "b1" not in [r["id"] for r in after.json()["results"]]


@pytest.mark.parametrize(
    ("method", "path", "payload", "field"),
    [
        ("get", "/search", {"q": "x", "k": "0"}, "k:"),
        ("get", "/search", {"q": "x", "k": "101"}, "k:"),
        ("get", "/search", {"q": "x", "k": "many"}, "k:"),
        ("get", "/search", {"k": "3"}, "q:"),
        ("post", "/search", {"q": "x", "k": 500}, "k:"),
        ("post", "", {"text": ""}, "text:"),
        ("post", "", {"text": "   "}, "text:"),
        ("post", "", {"text": "x" * 40_000}, "text:"),
        ("post", "", {"text": "x", "metadata": {"tags": ["a"]}}, "metadata.tags:"),
        ("post", "", {"text": "x", "metadata": {"n": None}}, "metadata.n:"),
        ("post", "", {"text": "x", "ttlSeconds": -1}, "ttlSeconds:"),
        ("post", "", {"text": "x", "id": ""}, "id:"),
        ("post", "", {"txt": "x"}, "txt:"),
    ],
)
async def test_a_bad_request_is_a_400_naming_the_field(
    api: tuple[httpx.AsyncClient, FakeKube],
    fleet: FleetKeys,
    method: str,
    path: str,
    payload: dict[str, Any],
    field: str,
) -> None:
    client, _ = api
    url, writer = _base(fleet) + path, _as("writer")
    if method == "get":
        reply = await client.get(url, params=payload, headers=writer)
    else:
        reply = await client.post(url, json=payload, headers=writer)
    assert reply.status_code == 400, reply.text
    assert reply.json()["error"].startswith(field)


async def test_roles_decide_who_reads_and_who_writes(
    api: tuple[httpx.AsyncClient, FakeKube], fleet: FleetKeys
) -> None:
    client, kube = api
    base = _base(fleet)
    refused = await client.post(base, json={"text": "hello"}, headers=_as("reader"))
    assert refused.status_code == 403
    assert "may not create newfuseagents/memory" in refused.json()["error"]
    assert (await client.delete(f"{base}/x", headers=_as("reader"))).status_code == 403
    search = await client.get(f"{base}/search", params={"q": "x"}, headers=_as("nobody"))
    assert search.status_code == 403
    assert (await client.get(f"{base}/search", params={"q": "x"})).status_code == 401
    reader = await client.get(f"{base}/search", params={"q": "x"}, headers=_as("reader"))
    assert reader.status_code == 200
    assert ("reader", "get", "memory") in kube.asked
    ghost = await client.get(
        f"/fleets/{fleet.namespace}/ghost/memory/search", params={"q": "x"}, headers=_as("reader")
    )
    assert ghost.status_code == 404
