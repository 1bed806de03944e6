"""`newfuse review`: the fleet's review queue, and the decisions that resume its tasks.

`list` and `show` read it, `approve`, `reject` and `answer` decide (once: a review already decided
or past its timeout is refused), `feedback` exports the decisions as a dataset (a table, or JSON
lines with `--json`). Through `--server` the gateway checks the caller's token; on Redis the CLI
asks the API server (see newfuse.cli.reviewclient). Either way RBAC decides, and a refusal is one
`Forbidden` line.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.markup import escape
from rich.table import Table

from newfuse.adapters.reviews import ReviewNotFoundError, ReviewStore
from newfuse.adapters.taskclient import TaskClient
from newfuse.cli.common import (
    DEFAULT_NAMESPACE,
    DEFAULT_REDIS,
    REMOTE,
    Fleet,
    Namespace,
    RedisUrl,
    app,
    console,
    fail,
    run,
    with_client,
)
from newfuse.cli.remote import find_token
from newfuse.cli.render import age, clip, when
from newfuse.cli.reviewclient import RemoteReviews, ReviewClient, rbac_reviewer
from newfuse.cli.rollout import Kubeconfig
from newfuse.core.review import ReviewRefusedError
from newfuse.wire.review import Review, ReviewDecision, Verdict

review_app = typer.Typer(help="Review tasks that wait for a person.", no_args_is_help=True)
app.add_typer(review_app, name="review")
T = TypeVar("T")
ReviewId = Annotated[str, typer.Argument(help="The review's id (from `newfuse review list`).")]
Comment = Annotated[str | None, typer.Option("--comment", "-c", help="Why (kept as feedback).")]


async def with_reviews(
    url: str,
    namespace: str,
    fleet: str,
    kubeconfig: str | None,
    verb: str,
    body: Callable[[ReviewClient, str], Awaitable[T]],
) -> T:
    """Run ``body`` with the fleet's review queue and the reviewer's name, if RBAC allows."""
    if REMOTE.server is not None:
        remote = RemoteReviews(REMOTE.server, namespace, fleet, find_token(REMOTE.token))
        try:
            return await body(remote, "")  # the gateway names the reviewer from the token
        finally:
            await remote.aclose()
    reviewer = rbac_reviewer(kubeconfig, verb, namespace, fleet)

    async def on_redis(client: TaskClient) -> T:
        return await body(ReviewStore(client.client, client.keys), reviewer)

    return await with_client(url, namespace, fleet, on_redis)


def refused(exc: Exception) -> NoReturn:
    fail(str(exc))
    raise typer.Exit(1)


@review_app.command("list")
@run
async def list_reviews(
    fleet: Fleet,
    namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
    kubeconfig: Kubeconfig = None,
) -> None:
    """The open reviews, soonest due first."""

    async def body(reviews: ReviewClient, _: str) -> None:
        table = Table(title=f"open reviews of {escape(namespace)}/{escape(fleet)}")
        for column in ("review", "kind", "handler", "revision", "state", "asked", "due"):
            table.add_column(column)
        table.add_column("question / output")
        for review in await reviews.open_reviews():
            r = review.request
            what = r.question if r.question is not None else json.dumps(r.output, default=str)
            table.add_row(
                clip(r.id, 60), r.kind.value, clip(r.handler, 30), clip(r.revision or "-", 30),
                review.state.value, age(r.created_at), when(review.due), clip(what, 60),
            )  # fmt: skip
        console.print(table)

    await with_reviews(redis_url, namespace, fleet, kubeconfig, "get", body)


@review_app.command("show")
@run
async def show(
    fleet: Fleet,
    review_id: ReviewId,
    namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
    kubeconfig: Kubeconfig = None,
) -> None:
    """One review as JSON: what was asked, of what input, and its decision once decided."""
    review = await read_review(redis_url, namespace, fleet, kubeconfig, review_id)
    console.print_json(review.model_dump_json())


async def read_review(
    url: str, namespace: str, fleet: str, kubeconfig: str | None, review_id: str
) -> Review:
    """One review, if RBAC lets the caller read the fleet's reviews; else one clear line."""

    async def body(reviews: ReviewClient, _: str) -> Review:
        try:
            return await reviews.get(review_id)
        except ReviewNotFoundError as exc:
            refused(exc)

    return await with_reviews(url, namespace, fleet, kubeconfig, "get", body)


def _decide(
    fleet: str,
    review_id: str,
    namespace: str,
    redis_url: str,
    kubeconfig: str | None,
    verdict: Verdict,
    **fields: Any,
) -> None:
    async def body(reviews: ReviewClient, reviewer: str) -> None:
        decision = ReviewDecision(
            verdict=verdict,
            reviewer=reviewer or "-",
            decided_at=dt.datetime.now(dt.UTC),
            **fields,
        )
        try:
            state = await reviews.decide(review_id, decision)
        except (ReviewNotFoundError, ReviewRefusedError) as exc:
            refused(exc)
        console.print(f"review {escape(review_id)}: {state.value}")

    run(with_reviews)(redis_url, namespace, fleet, kubeconfig, "update", body)


def _json_or_text(value: str) -> Any:
    """A JSON value, or the text itself (an answer "yes" needs no quotes)."""
    if value.startswith("@"):
        value = Path(value[1:]).read_text(encoding="utf-8")
    try:
        return json.loads(value)
    except ValueError:
        return value


@review_app.command("approve")
def approve(
    fleet: Fleet,
    review_id: ReviewId,
    comment: Comment = None,
    output: Annotated[
        str | None,
        typer.Option("--output", help="An edited output to store instead (JSON, or @file)."),
    ] = None,
    namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
    kubeconfig: Kubeconfig = None,
) -> None:
    """Approve: the output becomes the task's result (or the question's answer is `null`)."""
    edit = {"answer": _json_or_text(output), "edited": True} if output is not None else {}
    _decide(
        fleet, review_id, namespace, redis_url, kubeconfig, Verdict.APPROVE,
        comment=comment, **edit,
    )  # fmt: skip


@review_app.command("reject")
def reject(
    fleet: Fleet,
    review_id: ReviewId,
    reason: Annotated[str, typer.Option("--reason", "-r", help="Why: the task fails with it.")],
    namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
    kubeconfig: Kubeconfig = None,
) -> None:
    """Reject: the task fails with your reason."""
    _decide(fleet, review_id, namespace, redis_url, kubeconfig, Verdict.REJECT, comment=reason)


@review_app.command("answer")
def answer(
    fleet: Fleet,
    review_id: ReviewId,
    value: Annotated[str, typer.Argument(help="The answer: JSON, plain text, or @file.")],
    comment: Comment = None,
    namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
    kubeconfig: Kubeconfig = None,
) -> None:
    """Answer a handler's question: the task runs again and gets the answer."""
    _decide(
        fleet, review_id, namespace, redis_url, kubeconfig, Verdict.ANSWER,
        comment=comment, answer=_json_or_text(value),
    )  # fmt: skip


@review_app.command("feedback")
@run
async def feedback(
    fleet: Fleet,
    revision: Annotated[str | None, typer.Option(help="Only outputs of this revision.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="JSON lines: the dataset.")] = False,
    limit: Annotated[int, typer.Option(min=1, max=100_000)] = 1000,
    namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
    kubeconfig: Kubeconfig = None,
) -> None:
    """Decisions with what they decided on, oldest first: the feedback dataset."""

    async def body(reviews: ReviewClient, _: str) -> None:
        rows = await reviews.feedback(revision=revision, limit=limit)
        if as_json:
            for row in rows:
                print(row.model_dump_json())
            return
        table = Table(title=f"review feedback of {escape(namespace)}/{escape(fleet)}")
        for column in ("decided", "review", "revision", "state", "reviewer", "comment"):
            table.add_column(column)
        for row in rows:
            revision_of = row.request.revision if row.request else None
            table.add_row(
                when(row.decision.decided_at), clip(row.request.id if row.request else "-", 60),
                clip(revision_of or "-", 30),
                row.state, clip(row.decision.reviewer, 40), clip(row.decision.comment or "", 60),
            )  # fmt: skip
        console.print(table)

    await with_reviews(redis_url, namespace, fleet, kubeconfig, "get", body)
