"""A fleet's review queue over HTTP: list, show and decide reviews, read the feedback dataset.

- `GET /reviews/<namespace>/<fleet>`: the open reviews, soonest due first;
- `GET /reviews/<namespace>/<fleet>/feedback?revision=&since=&limit=`: decisions, oldest first;
- `GET /reviews/<namespace>/<fleet>/<id>`: one review, with its decision once decided;
- `POST /reviews/<namespace>/<fleet>/<id>` `{"verdict", "comment", "answer", "output"}`: decide.

RBAC governs reviewers, not task submitters: reading needs `get` on `newfuseagents/reviews` and
deciding `update` on it, asked of the API server with a SubjectAccessReview. The reviewer recorded
in the audit log is the token's user, never a name the body gives.
"""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any, Final

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from newfuse.adapters.reviews import ReviewNotFoundError, ReviewStore
from newfuse.core.review import ReviewConflictError, ReviewRefusedError
from newfuse.fleetapi.auth import AuthError, Identity, admit, audit
from newfuse.fleetapi.fleets import Fleets
from newfuse.fleetapi.metrics import REVIEW_SECONDS, REVIEWS
from newfuse.wire.endpoints import FEEDBACK, REVIEWS_PREFIX
from newfuse.wire.keys import FleetKeys
from newfuse.wire.review import REVIEW_SUBRESOURCE, ReviewDecision, Verdict

ANONYMOUS: Final = "system:anonymous"
STREAM_ID: Final = re.compile(r"^\(?[0-9]{1,20}(-[0-9]{1,20})?$")
MAX_FEEDBACK: Final = 10_000


def _error(status: int, message: str) -> JSONResponse:
    return JSONResponse({"error": message}, status_code=status)


def decision_of(body: Any, reviewer: str, now: dt.datetime) -> ReviewDecision:
    """The decision a POST body asks for; ValueError naming the field that is wrong."""
    if not isinstance(body, dict):
        raise ValueError("the body must be a JSON object with a verdict")
    verdict = body.get("verdict")
    if verdict not in {v.value for v in Verdict}:
        raise ValueError(f"verdict: one of {', '.join(v.value for v in Verdict)}, got {verdict!r}")
    edited = "output" in body
    try:
        return ReviewDecision(
            verdict=Verdict(verdict),
            reviewer=reviewer,
            comment=body.get("comment"),
            answer=body["output"] if edited else body.get("answer"),
            edited=edited,
            decided_at=now,
        )
    except ValidationError as exc:
        first = exc.errors()[0]
        raise ValueError(f"{'.'.join(str(p) for p in first['loc'])}: {first['msg']}") from None


@dataclass(frozen=True)
class ReviewEndpoints:
    """The review queue of every fleet the gateway serves."""

    fleets: Fleets
    identity: Identity | None  # None: anybody may review

    def routes(self) -> list[BaseRoute]:
        """The routes, under REVIEWS_PREFIX."""
        base = REVIEWS_PREFIX + "/{namespace}/{fleet}"
        return [
            Route(base, self.queue, methods=["GET"]),
            Route(f"{base}/{FEEDBACK}", self.feedback, methods=["GET"]),
            Route(base + "/{review}", self.show, methods=["GET"]),
            Route(base + "/{review}", self.decide, methods=["POST"]),
        ]

    async def _admit(self, request: Request, verb: str) -> Response | None:
        """None if the caller may go on (`request.state.store`, `.reviewer`); else the refusal."""
        namespace, name = request.path_params["namespace"], request.path_params["fleet"]
        try:
            reviewer = await admit(self.identity, request, verb, REVIEW_SUBRESOURCE)
        except AuthError as exc:
            return _error(exc.status, exc.message)
        request.state.reviewer = reviewer or ANONYMOUS
        if await self.fleets.lookup(namespace, name) is None:
            return _error(404, f"no fleet {name!r} in namespace {namespace!r}")
        request.state.store = ReviewStore(self.fleets.client, FleetKeys(namespace, name))
        return None

    async def queue(self, request: Request) -> Response:
        if refused := await self._admit(request, "get"):
            return refused
        reviews = await request.state.store.open_reviews()
        return JSONResponse({"reviews": [r.model_dump(mode="json") for r in reviews]})

    async def show(self, request: Request) -> Response:
        if refused := await self._admit(request, "get"):
            return refused
        try:
            review = await request.state.store.get(request.path_params["review"])
        except ReviewNotFoundError as exc:
            return _error(404, str(exc))
        return JSONResponse(review.model_dump(mode="json"))

    async def feedback(self, request: Request) -> Response:
        if refused := await self._admit(request, "get"):
            return refused
        query = request.query_params
        try:
            limit = min(MAX_FEEDBACK, int(query.get("limit", "1000")))
        except ValueError:
            return _error(400, f"limit: a number, got {query.get('limit')!r}")
        since = query.get("since", "-")
        if since != "-" and not STREAM_ID.match(since):
            return _error(400, f"since: a review log entry id like 1764650000000-0, got {since!r}")
        rows = await request.state.store.feedback(
            revision=query.get("revision"), since=since, limit=limit
        )
        return JSONResponse({"feedback": [row.model_dump(mode="json") for row in rows]})

    async def decide(self, request: Request) -> Response:
        if refused := await self._admit(request, "update"):
            return refused
        store: ReviewStore = request.state.store
        user, review_id = request.state.reviewer, request.path_params["review"]
        try:
            decision = decision_of(await request.json(), user, dt.datetime.now(dt.UTC))
        except ValueError as exc:
            return _error(400, str(exc))
        try:
            state = await store.decide(review_id, decision)
        except ReviewNotFoundError as exc:
            return _error(404, str(exc))
        except ReviewRefusedError as exc:
            REVIEWS.labels("refused").inc()
            return _error(409 if isinstance(exc, ReviewConflictError) else 422, str(exc))
        REVIEWS.labels(decision.verdict.value).inc()
        review = await store.get(review_id)
        REVIEW_SECONDS.observe(
            max(0.0, (decision.decided_at - review.request.created_at).total_seconds())
        )
        audit.info(
            "%s decided review %s: %s", user, review_id, decision.verdict.value,
            extra={"user": user, "review": review_id, "verdict": decision.verdict.value,
                   "namespace": store.keys.namespace, "fleet": store.keys.fleet},
        )  # fmt: skip
        return JSONResponse({"state": state.value, "review": review.model_dump(mode="json")})
