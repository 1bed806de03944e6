"""Token verification and RBAC decisions of the fleet API, against an API server in memory."""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import rsa

from newfuse.adapters.kubeauth import ReviewedUser
from newfuse.fleetapi.auth import Authenticator, AuthError, Authorizer, verb_of

ISSUER = "https://kubernetes.default.svc.cluster.local"
KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
OTHER = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwks(*keys: tuple[rsa.RSAPrivateKey, str]) -> dict[str, Any]:
    found = []
    for key, kid in keys:
        public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(key.public_key()))
        found.append({**public, "kid": kid, "alg": "RS256", "use": "sig"})
    return {"keys": found}


class FakeKube:
    """Issuer discovery, TokenReview and SubjectAccessReview answered from memory."""

    def __init__(self, jwks: dict[str, Any] | None = None) -> None:
        self.keys = jwks if jwks is not None else _jwks((KEY, "k1"))
        self.discovery_works = True
        self.reviewed: list[str] = []
        self.review_answer: ReviewedUser | None = None
        self.decisions: list[tuple[str, str, str, str]] = []
        self.allowed = True
        self.fetches = 0

    def issuer(self) -> str:
        self.fetches += 1
        if not self.discovery_works:
            raise RuntimeError("GET /.well-known/openid-configuration: HTTP 404")
        return ISSUER

    def jwks(self) -> dict[str, Any]:
        return self.keys

    def review_token(self, token: str, audience: str) -> ReviewedUser | None:
        self.reviewed.append(audience)
        return self.review_answer

    def may(
        self, user: ReviewedUser, verb: str, namespace: str, fleet: str, subresource: str = "tasks"
    ) -> tuple[bool, str]:
        time.sleep(0.05)  # an API server round trip: concurrent askers overlap
        self.decisions.append((user.username, verb, namespace, fleet))
        return self.allowed, "" if self.allowed else "no RBAC rule matched"


def _token(key: Any = KEY, kid: str = "k1", algorithm: str = "RS256", **claims: Any) -> str:
    now = int(time.time())
    body = {
        "iss": ISSUER,
        "sub": "system:serviceaccount:team-a:caller",
        "aud": ["newfuse-gateway"],
        "iat": now,
        "exp": now + 600,
        "kubernetes.io": {"namespace": "team-a", "serviceaccount": {"name": "caller", "uid": "u1"}},
        **claims,
    }
    return jwt.encode(body, key, algorithm=algorithm, headers={"kid": kid})


async def _identify(token: str, kube: FakeKube | None = None) -> ReviewedUser:
    return await Authenticator(kube or FakeKube(), "newfuse-gateway").identify(token)  # type: ignore[arg-type]


@pytest.mark.asyncio
async def test_a_service_account_token_names_its_user_and_groups() -> None:
    user = await _identify(_token())
    assert user.username == "system:serviceaccount:team-a:caller"
    assert user.groups == (
        "system:serviceaccounts", "system:serviceaccounts:team-a", "system:authenticated",
    )  # fmt: skip
    assert user.uid == "u1"


@pytest.mark.parametrize(
    ("token", "says"),
    [
        (_token(exp=int(time.time()) - 5), "expired"),
        (_token(aud=["https://kubernetes.default.svc"]), "not for this gateway"),
        (_token(key=OTHER), "invalid token"),
        (_token(iss=ISSUER, sub=None), "invalid token"),
        ("a.b.c", "not a JWT"),
        ("", "not a JWT"),
    ],
    ids=["expired", "wrong audience", "signed by another key", "no subject", "garbage", "empty"],
)
@pytest.mark.asyncio
async def test_bad_tokens_are_refused_with_401(token: str, says: str) -> None:
    with pytest.raises(AuthError, match=says) as refused:
        await _identify(token)
    assert refused.value.status == 401


@pytest.mark.asyncio
async def test_a_public_key_used_as_an_hmac_secret_is_refused() -> None:
    kube = FakeKube()
    kube.keys = {
        "keys": [
            {
                "kty": "oct",
                "k": "c3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3Nzc3M",
                "kid": "k1",
                "alg": "HS256",
            }
        ]
    }
    forged = jwt.encode(
        {"iss": ISSUER, "sub": "x", "aud": "newfuse-gateway", "exp": int(time.time()) + 60},
        "s" * 32,
        algorithm="HS256",
        headers={"kid": "k1"},
    )
    with pytest.raises(AuthError, match="not an asymmetric algorithm"):
        await _identify(forged, kube)


@pytest.mark.asyncio
async def test_an_unknown_key_id_or_no_discovery_goes_to_token_review() -> None:
    kube = FakeKube()
    kube.review_answer = ReviewedUser("system:serviceaccount:a:b", ("system:authenticated",))
    assert (await _identify(_token(kid="rotated"), kube)).username == "system:serviceaccount:a:b"
    assert kube.reviewed == ["newfuse-gateway"]
    kube.discovery_works = False
    other = Authenticator(kube, "newfuse-gateway")  # type: ignore[arg-type]
    assert (await other.identify(_token())).username == "system:serviceaccount:a:b"
    kube.review_answer = None
    with pytest.raises(AuthError, match="does not accept") as refused:
        await other.identify(_token())
    assert refused.value.status == 401


@pytest.mark.asyncio
async def test_a_token_of_another_issuer_is_never_verified_with_the_api_servers_keys() -> None:
    kube = FakeKube()
    with pytest.raises(AuthError, match="does not accept"):
        await _identify(_token(iss="https://elsewhere"), kube)
    assert kube.reviewed == ["newfuse-gateway"]


@pytest.mark.parametrize(
    ("method", "verb"),
    [("SendMessage", "create"), ("SendStreamingMessage", "create"), ("CancelTask", "create"),
     ("GetTask", "get"), ("ListTasks", "get"), ("SubscribeToTask", "get"),
     ("SomethingNew", "create"), ("", "create")],
)  # fmt: skip
def test_verbs_of_methods(method: str, verb: str) -> None:
    assert verb_of(method) == verb


@pytest.mark.asyncio
async def test_decisions_are_cached_and_denials_raise_403_naming_user_and_fleet() -> None:
    kube = FakeKube()
    authorizer = Authorizer(kube, ttl=60)  # type: ignore[arg-type]
    user = ReviewedUser("alice", ("team",))
    for _ in range(3):
        await authorizer.check(user, "create", "ns", "a")
    assert kube.decisions == [("alice", "create", "ns", "a")]
    kube.allowed = False
    with pytest.raises(AuthError, match="alice may not get newfuseagents/tasks of ns/b") as denied:
        await authorizer.check(user, "get", "ns", "b")
    assert denied.value.status == 403
    assert "no RBAC rule matched" in denied.value.message


@pytest.mark.asyncio
async def test_a_burst_of_callers_costs_one_key_fetch_and_one_review() -> None:
    kube = FakeKube()
    authenticator = Authenticator(kube, "newfuse-gateway")  # type: ignore[arg-type]
    authorizer = Authorizer(kube, ttl=60)  # type: ignore[arg-type]

    async def caller() -> None:
        user = await authenticator.identify(_token())
        await authorizer.check(user, "watch", "ns", "a", subresource="")

    await asyncio.gather(*(caller() for _ in range(200)))
    assert kube.fetches == 1
    assert len(kube.decisions) == 1
    assert kube.reviewed == [], "the API server's keys verified every token locally"


@pytest.mark.asyncio
async def test_made_up_key_ids_and_failed_discovery_do_not_flood_the_api_server() -> None:
    kube = FakeKube()
    kube.review_answer = ReviewedUser("system:serviceaccount:a:b", ("system:authenticated",))
    authenticator = Authenticator(kube, "newfuse-gateway")  # type: ignore[arg-type]
    for n in range(20):
        await authenticator.identify(_token(kid=f"made-up-{n}"))
    assert kube.fetches == 1, "an unknown key id refreshes the keys at most every 30 s"
    kube.discovery_works = False
    broken = Authenticator(kube, "newfuse-gateway")  # type: ignore[arg-type]
    for _ in range(20):
        await broken.identify(_token())
    assert kube.fetches == 2, "a failed discovery is not retried on every call"
