"""Who is calling the fleet API, and may they: bearer JWTs verified with PyJWT, RBAC decides.

Two kinds of token are taken:
- Kubernetes ServiceAccount tokens, verified against the keys the API server publishes
  (`/openid/v1/jwks`) and this gateway's audience. A token those keys cannot verify (an unknown
  key id after a rotation, or a cluster without issuer discovery) goes to a TokenReview;
- tokens of OIDC issuers an admin configured, verified against each issuer's own JWKS.

Only asymmetric algorithms are accepted (the key decides which), so a token signed with a public
key as an HMAC secret is refused. A verified caller is then authorized by a SubjectAccessReview
on the fleet's `tasks` subresource; decisions are cached briefly, and every denial is logged.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

import jwt
from cachetools import TTLCache
from starlette.requests import Request

from newfuse.adapters.kubeauth import TASKS_SUBRESOURCE, KubeAuth, ReviewedUser
from newfuse.api.v1alpha1 import PLURAL
from newfuse.fleetapi.metrics import TOKENS

log = logging.getLogger(__name__)
audit = logging.getLogger("newfuse.audit")

# The RBAC verb on `newfuseagents/tasks` each A2A method needs.
VERBS: Final = {
    "SendMessage": "create",
    "SendStreamingMessage": "create",
    "CancelTask": "create",
    "GetTask": "get",
    "ListTasks": "get",
    "SubscribeToTask": "get",
    "CreateTaskPushNotificationConfig": "create",
    "DeleteTaskPushNotificationConfig": "create",
    "GetTaskPushNotificationConfig": "get",
    "ListTaskPushNotificationConfigs": "get",
}
ASYMMETRIC: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
SERVICE_ACCOUNTS: Final = "system:serviceaccounts"
AUTHENTICATED: Final = "system:authenticated"


class AuthError(Exception):
    """A request refused: 401 (who are you?) or 403 (not allowed)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class OidcIssuer:
    """An OIDC issuer whose tokens the gateway takes, and how its claims name users."""

    issuer: str
    audience: str
    jwks_uri: str
    username_claim: str = "sub"
    groups_claim: str = "groups"
    prefix: str = "oidc:"


def verb_of(method: str) -> str:
    """The RBAC verb ``method`` needs; `create` for anything unknown (the stricter one)."""
    return VERBS.get(method, "create")


def _decode(token: str, key: jwt.PyJWK, audience: str, issuer: str) -> dict[str, Any]:
    if key.algorithm_name not in ASYMMETRIC:
        raise AuthError(401, f"token key uses {key.algorithm_name}, not an asymmetric algorithm")
    try:
        return dict(
            jwt.decode(
                token,
                key.key,
                algorithms=[key.algorithm_name],
                audience=audience,
                issuer=issuer,
                options={"require": ["exp", "iss", "aud", "sub"]},
            )
        )
    except jwt.ExpiredSignatureError:
        raise AuthError(401, "token expired") from None
    except jwt.InvalidAudienceError:
        raise AuthError(401, f"token is not for this gateway (audience {audience!r})") from None
    except jwt.InvalidTokenError as exc:
        raise AuthError(401, f"invalid token: {exc}") from None


def service_account(claims: dict[str, Any]) -> ReviewedUser:
    """The user a verified ServiceAccount token names, as the API server would see it."""
    inner = claims.get("kubernetes.io") or {}
    namespace = str(inner.get("namespace") or "")
    uid = str((inner.get("serviceaccount") or {}).get("uid") or "")
    groups = (SERVICE_ACCOUNTS, f"{SERVICE_ACCOUNTS}:{namespace}", AUTHENTICATED)
    return ReviewedUser(str(claims["sub"]), groups, uid)


REFETCH_SECONDS: Final = 30.0


class Authenticator:
    """Turns a bearer token into a user, or refuses it with AuthError(401)."""

    def __init__(
        self,
        kube: KubeAuth,
        audience: str,
        oidc: Sequence[OidcIssuer] = (),
        keys_ttl: float = 300.0,
    ) -> None:
        """Verify ServiceAccount tokens for ``audience`` and tokens of the ``oidc`` issuers."""
        self.kube, self.audience, self.keys_ttl = kube, audience, keys_ttl
        self._oidc = {o.issuer: (o, jwt.PyJWKClient(o.jwks_uri, lifespan=keys_ttl)) for o in oidc}
        self._keys: tuple[float, str, jwt.PyJWKSet] | None = None
        self._fetching = asyncio.Lock()  # a burst of callers fetches the API server's keys once
        self._failed_at: float | None = None

    async def identify(self, token: str) -> ReviewedUser:
        """The verified user ``token`` belongs to."""
        try:
            issuer = jwt.decode(token, options={"verify_signature": False}).get("iss")
            kid = jwt.get_unverified_header(token).get("kid")
        except jwt.InvalidTokenError:
            raise AuthError(401, "the bearer token is not a JWT") from None
        if issuer in self._oidc:
            TOKENS.labels("oidc").inc()
            return await asyncio.to_thread(self._oidc_user, token, *self._oidc[issuer])
        key = await self._service_account_key(str(issuer), kid)
        if key is None:
            TOKENS.labels("tokenreview").inc()
            return await self._reviewed(token)
        TOKENS.labels("jwks").inc()
        return service_account(_decode(token, key, self.audience, str(issuer)))

    def _oidc_user(self, token: str, issuer: OidcIssuer, keys: jwt.PyJWKClient) -> ReviewedUser:
        try:
            key = keys.get_signing_key_from_jwt(token)
        except jwt.PyJWKClientError as exc:
            raise AuthError(401, f"no key of {issuer.issuer} verifies the token: {exc}") from None
        claims = _decode(token, key, issuer.audience, issuer.issuer)
        groups = claims.get(issuer.groups_claim) or []
        return ReviewedUser(
            issuer.prefix + str(claims.get(issuer.username_claim, claims["sub"])),
            (*(issuer.prefix + str(g) for g in groups if isinstance(g, str)), AUTHENTICATED),
        )

    async def _service_account_key(self, issuer: str, kid: Any) -> jwt.PyJWK | None:
        """The API server's key ``kid`` if ``issuer`` is the API server's; None: ask TokenReview."""
        for refresh in (False, True):
            found = await self._api_keys(refresh=refresh)
            if found is None or found[0] != issuer:
                return None
            for key in found[1].keys:
                if key.key_id == kid:
                    return key
        return None

    async def _api_keys(self, *, refresh: bool) -> tuple[str, jwt.PyJWKSet] | None:
        async with self._fetching:
            now = time.monotonic()
            # A token with an unknown key id refreshes the keys, but at most every REFETCH_SECONDS:
            # tokens with made-up key ids must not turn into a stream of calls to the API server.
            fresh = REFETCH_SECONDS if refresh else self.keys_ttl
            if self._keys is not None and now - self._keys[0] < fresh:
                return self._keys[1], self._keys[2]
            if self._failed_at is not None and now - self._failed_at < REFETCH_SECONDS:
                return None
            return await self._fetch_keys(now)

    async def _fetch_keys(self, now: float) -> tuple[str, jwt.PyJWKSet] | None:
        try:
            issuer = await asyncio.to_thread(self.kube.issuer)
            keys = jwt.PyJWKSet.from_dict(await asyncio.to_thread(self.kube.jwks))
        except Exception as exc:  # no discovery: TokenReview still answers
            log.warning("service-account issuer discovery failed (%s): using TokenReview", exc)
            self._failed_at = now
            return None
        self._keys, self._failed_at = (now, issuer, keys), None
        return issuer, keys

    async def _reviewed(self, token: str) -> ReviewedUser:
        user = await asyncio.to_thread(self.kube.review_token, token, self.audience)
        if user is None:
            raise AuthError(401, "the API server does not accept the token for this gateway")
        return user


def _resource(subresource: str) -> str:
    return f"{PLURAL}/{subresource}" if subresource else PLURAL


class Authorizer:
    """RBAC decisions on fleets' tasks, cached for ``ttl`` seconds."""

    def __init__(self, kube: KubeAuth, ttl: float = 10.0, size: int = 10_000) -> None:
        """Ask ``kube``; keep up to ``size`` decisions."""
        self.kube = kube
        self._decisions: TTLCache[tuple[Any, ...], tuple[bool, str]] = TTLCache(size, ttl)
        self._asking: dict[tuple[Any, ...], asyncio.Future[tuple[bool, str]]] = {}

    async def check(
        self,
        user: ReviewedUser,
        verb: str,
        namespace: str,
        fleet: str,
        subresource: str = TASKS_SUBRESOURCE,
    ) -> None:
        """Return if RBAC allows ``verb`` on the fleet's ``subresource`` ("": the fleet itself).

        Raise AuthError(403) and log the denial otherwise.
        """
        key = (user.username, user.groups, verb, namespace, fleet, subresource)
        decision = self._decisions.get(key)
        if decision is None:
            # One review per question: a burst of callers (500 clients reconnecting after a
            # gateway restart) waits on the first one's answer instead of asking again.
            pending = self._asking.get(key)
            if pending is None:
                pending = asyncio.ensure_future(
                    asyncio.to_thread(self.kube.may, user, verb, namespace, fleet, subresource)
                )
                self._asking[key] = pending
                pending.add_done_callback(lambda _: self._asking.pop(key, None))
            decision = await asyncio.shield(pending)
            self._decisions[key] = decision
        allowed, reason = decision
        if not allowed:
            log.warning(
                "denied %s on %s/%s tasks to %s", verb, namespace, fleet, user.username,
                extra={"user": user.username, "groups": list(user.groups), "verb": verb,
                       "namespace": namespace, "fleet": fleet, "reason": reason},
            )  # fmt: skip
            raise AuthError(
                403,
                f"{user.username} may not {verb} {_resource(subresource)} of {namespace}/{fleet}"
                + (f": {reason}" if reason else ""),
            )


Identity = tuple[Authenticator, Authorizer]


async def admit(
    identity: Identity | None, request: Request, verb: str, subresource: str
) -> str | None:
    """The caller's user name if it may ``verb`` the fleet's ``subresource`` (AuthError if not).

    The fleet is the request's `namespace` and `fleet` path parameters; None: no identity is
    configured, so anybody may.
    """
    if identity is None:
        return None
    authenticator, authorizer = identity
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise AuthError(401, "a bearer token is required (Authorization: Bearer <JWT>)")
    who = await authenticator.identify(token.strip())
    namespace, name = request.path_params["namespace"], request.path_params["fleet"]
    await authorizer.check(who, verb, namespace, name, subresource=subresource)
    return who.username
