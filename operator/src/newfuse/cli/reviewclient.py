"""Where `newfuse review` reads and decides: the fleet's Redis, or the gateway (`--server`).

Directly on Redis, the CLI asks the API server first what the gateway would ask: a
SelfSubjectAccessReview for `update` (or `get`) on `newfuseagents/reviews`, and a SelfSubjectReview
for the name the audit log records. So the same RBAC governs reviewers either way; Redis
credentials alone do not make a reviewer.
"""

from __future__ import annotations

from typing import Any, Protocol

import httpx

from newfuse.adapters.reviews import ReviewNotFoundError, ReviewStore
from newfuse.api.v1alpha1 import GROUP, PLURAL
from newfuse.cli.remote import GatewayError, raise_refusal
from newfuse.cli.rollout import api_client, whoami
from newfuse.core.review import ReviewConflictError, ReviewRefusedError
from newfuse.wire.endpoints import FEEDBACK, reviews_path
from newfuse.wire.review import REVIEW_SUBRESOURCE, Feedback, Review, ReviewDecision, ReviewState


class ReviewClient(Protocol):
    """What the review commands use; ReviewStore (Redis) and RemoteReviews (gateway) are ones."""

    async def open_reviews(self, limit: int = 200) -> list[Review]: ...
    async def get(self, review_id: str) -> Review: ...
    async def decide(self, review_id: str, decision: ReviewDecision) -> ReviewState: ...
    async def feedback(
        self, *, revision: str | None = None, since: str = "-", limit: int = 1000
    ) -> list[Feedback]: ...


def rbac_reviewer(kubeconfig: str | None, verb: str, namespace: str, fleet: str) -> str:
    """Who the kubeconfig's user is, if RBAC lets them ``verb`` the fleet's reviews; else raise."""
    from kubernetes import client as k8s_client

    api = api_client(kubeconfig)
    review = k8s_client.V1SelfSubjectAccessReview(
        spec=k8s_client.V1SelfSubjectAccessReviewSpec(
            resource_attributes=k8s_client.V1ResourceAttributes(
                group=GROUP,
                resource=PLURAL,
                subresource=REVIEW_SUBRESOURCE,
                verb=verb,
                namespace=namespace,
                name=fleet,
            )
        )
    )
    from kubernetes.client.exceptions import ApiException

    try:
        reply = k8s_client.AuthorizationV1Api(api).create_self_subject_access_review(review)
    except ApiException as exc:
        raise GatewayError(
            f"cannot check review permissions: the API server answered {exc.status} "
            f"{exc.reason} (is the kubeconfig's token for the API server?)"
        ) from None
    status = reply.status
    user = whoami(kubeconfig)
    if status is None or not status.allowed:
        reason = f": {status.reason}" if status is not None and status.reason else ""
        raise GatewayError(
            f"Forbidden: {user} may not {verb} {PLURAL}/{REVIEW_SUBRESOURCE} of "
            f"{namespace}/{fleet}{reason}"
        )
    return user


class RemoteReviews:
    """A fleet's review queue on the gateway at ``server``."""

    def __init__(self, server: str, namespace: str, fleet: str, token: str) -> None:
        """Call the gateway as the holder of ``token`` (the gateway records its user)."""
        self.base = server.rstrip("/") + reviews_path(namespace, fleet)
        self.http = httpx.AsyncClient(
            headers={"Authorization": f"Bearer {token}"},
            timeout=60,
            event_hooks={"response": [raise_refusal]},
        )

    async def _call(self, method: str, path: str = "", **kwargs: Any) -> Any:
        response = await self.http.request(method, self.base + path, **kwargs)
        if response.is_success:
            return response.json()
        try:
            message = str(response.json().get("error"))
        except ValueError:
            message = response.text[:300]
        if response.status_code == 404:
            raise ReviewNotFoundError(message)
        if response.status_code == 409:
            raise ReviewConflictError(message)
        if response.status_code in (400, 422):
            raise ReviewRefusedError(message)
        raise GatewayError(f"the gateway answered {response.status_code}: {message}")

    async def open_reviews(self, limit: int = 200) -> list[Review]:
        body = await self._call("GET")
        return [Review.model_validate(r) for r in body["reviews"]][:limit]

    async def get(self, review_id: str) -> Review:
        return Review.model_validate(await self._call("GET", f"/{review_id}"))

    async def decide(self, review_id: str, decision: ReviewDecision) -> ReviewState:
        body: dict[str, Any] = {"verdict": decision.verdict.value, "comment": decision.comment}
        body["output" if decision.edited else "answer"] = decision.answer
        return ReviewState((await self._call("POST", f"/{review_id}", json=body))["state"])

    async def feedback(
        self, *, revision: str | None = None, since: str = "-", limit: int = 1000
    ) -> list[Feedback]:
        params: dict[str, Any] = {"since": since, "limit": limit}
        if revision is not None:
            params["revision"] = revision
        body = await self._call("GET", f"/{FEEDBACK}", params=params)
        return [Feedback.model_validate(row) for row in body["feedback"]]

    async def aclose(self) -> None:
        await self.http.aclose()


__all__ = ["RemoteReviews", "ReviewClient", "ReviewStore", "rbac_reviewer"]
