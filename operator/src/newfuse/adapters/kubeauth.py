"""What the fleet API asks the Kubernetes API server about its callers.

- The service-account issuer and its keys (`/.well-known/openid-configuration`, `/openid/v1/jwks`),
  read with the gateway's own credentials: the JWKS URI the discovery document names is usually an
  in-cluster address that a gateway outside the cluster cannot reach, the API server itself can.
- TokenReview, for a token the keys cannot verify locally.
- SubjectAccessReview: may this user do this verb to this fleet's tasks? RBAC decides, so platform
  teams grant fleet access with the Roles and RoleBindings they already use.

The kubernetes client is synchronous; callers run these in a thread (`asyncio.to_thread`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Final

from kubernetes import client as k8s

from newfuse.api.v1alpha1 import GROUP, PLURAL

TASKS_SUBRESOURCE: Final = "tasks"


@dataclass(frozen=True)
class ReviewedUser:
    """Who the API server says a token belongs to."""

    username: str
    groups: tuple[str, ...]
    uid: str = ""


class KubeAuth:
    """Issuer discovery, TokenReview and SubjectAccessReview over one API client."""

    def __init__(self, api: k8s.ApiClient) -> None:
        """Ask the API server that ``api`` is configured for."""
        self.api = api
        self._auth = k8s.AuthenticationV1Api(api)
        self._authz = k8s.AuthorizationV1Api(api)

    def _get(self, path: str, accept: str = "application/json") -> dict[str, Any]:
        method, url, headers, body, post = self.api.param_serialize(
            "GET", path, header_params={"Accept": accept}, auth_settings=["BearerToken"]
        )
        response = self.api.call_api(method, url, headers, body, post)
        if response.status != 200:
            raise RuntimeError(f"GET {path}: HTTP {response.status}")
        return dict(json.loads(response.read()))  # type: ignore[no-untyped-call]

    def issuer(self) -> str:
        """The service-account token issuer (`iss` of the tokens the API server signs)."""
        return str(self._get("/.well-known/openid-configuration")["issuer"])

    def jwks(self) -> dict[str, Any]:
        """The public keys that sign service-account tokens."""
        # The API server serves the key set only as what it is (406 for application/json).
        return self._get("/openid/v1/jwks", accept="application/jwk-set+json")

    def review_token(self, token: str, audience: str) -> ReviewedUser | None:
        """The user the API server authenticates ``token`` as, for ``audience``; None if none."""
        review = k8s.V1TokenReview(spec=k8s.V1TokenReviewSpec(token=token, audiences=[audience]))
        status = self._auth.create_token_review(review).status
        if status is None or not status.authenticated or status.user is None:
            return None
        user = status.user
        return ReviewedUser(user.username or "", tuple(user.groups or ()), user.uid or "")

    def may(
        self,
        user: ReviewedUser,
        verb: str,
        namespace: str,
        fleet: str,
        subresource: str = TASKS_SUBRESOURCE,
    ) -> tuple[bool, str]:
        """Whether RBAC lets ``user`` ``verb`` the fleet's ``subresource`` ("": the fleet itself).

        Also the API server's reason.
        """
        review = k8s.V1SubjectAccessReview(
            spec=k8s.V1SubjectAccessReviewSpec(
                user=user.username,
                groups=list(user.groups),
                uid=user.uid or None,
                resource_attributes=k8s.V1ResourceAttributes(
                    group=GROUP,
                    resource=PLURAL,
                    subresource=subresource or None,
                    verb=verb,
                    namespace=namespace,
                    name=fleet,
                ),
            )
        )
        status = self._authz.create_subject_access_review(review).status
        if status is None:
            return False, "the API server gave no decision"
        return bool(status.allowed), str(status.reason or "")
