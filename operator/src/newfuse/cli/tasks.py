"""`newfuse task ...`: submit tasks, follow the fleet's results, show one task's result.

A task's timeout and deadline are promises the agents keep (a task over its timeout, or past its
deadline, ends with a FAILED result whose reason says which); the CLI only states them. An
oversize task is refused here, before anything is written, rather than dead-lettered later.
"""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated, Any

import orjson
import typer
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)

from newfuse.adapters.streamread import MalformedEntry
from newfuse.adapters.taskclient import TaskClient, TaskSpec
from newfuse.cli.common import (
    DEFAULT_MAX_PAYLOAD,
    DEFAULT_NAMESPACE,
    DEFAULT_REDIS,
    REMOTE,
    Fleet,
    FleetClient,
    MaxPayload,
    Namespace,
    RedisUrl,
    console,
    errors,
    run,
    task_app,
    with_client,
)
from newfuse.cli.durations import FORMS, parse_deadline
from newfuse.cli.render import clip, result_line, result_view
from newfuse.wire.tasks import Priority, ResultPayload, ResultStatus

TaskId = Annotated[str, typer.Argument(help="The task's id.")]
AsJson = Annotated[bool, typer.Option("--json", help="Print the result as JSON.")]


def _parse_payload(payload: str) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload  # plain text is a valid input too


def _deadline(text: str | None) -> dt.datetime | None:
    if text is None:
        return None
    try:
        return parse_deadline(text, dt.datetime.now(dt.UTC))
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--deadline") from None


def _show(result: ResultPayload, as_json: bool) -> None:
    if as_json:
        console.print_json(result.model_dump_json())
    else:
        console.print(result_view(result))
    if result.status is ResultStatus.FAILED:
        raise typer.Exit(3)


@task_app.command("submit")
@run
async def submit(
    fleet: Fleet,
    payload: Annotated[
        str, typer.Option("--payload", "-p", help="Task input: JSON, or plain text.")
    ] = "null",
    handler: Annotated[
        str, typer.Option("--handler", help="Handler name (echo, chat, ...).")
    ] = "echo",
    priority: Annotated[
        Priority, typer.Option("--priority", help="high, normal or low.")
    ] = Priority.NORMAL,
    task_id: Annotated[
        str | None, typer.Option("--id", help="Task id (idempotent); default random.")
    ] = None,
    count: Annotated[int, typer.Option("--count", min=1, help="Submit this many copies.")] = 1,
    wait: Annotated[
        bool, typer.Option("--wait", help="Wait for the result(s) and print them.")
    ] = False,
    timeout: Annotated[
        float, typer.Option("--timeout", help="Seconds to wait with --wait.")
    ] = 60.0,
    max_attempts: Annotated[int, typer.Option("--max-attempts", min=1)] = 3,
    task_timeout: Annotated[
        float | None,
        typer.Option(
            "--task-timeout",
            metavar="SECONDS",
            help="How long one attempt may run (default: the fleet's task timeout).",
        ),
    ] = None,
    deadline: Annotated[
        str | None,
        typer.Option(
            "--deadline",
            metavar="WHEN",
            help=f"Fail the task (reason `deadline`) if it has not ended by then: {FORMS}.",
        ),
    ] = None,
    max_payload_bytes: MaxPayload = DEFAULT_MAX_PAYLOAD,
    namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
) -> None:
    """Submit a task (or --count of them, with a progress bar)."""
    task_input = _parse_payload(payload)
    if count > 1 and task_id is not None:
        raise typer.BadParameter("--id names one task; it cannot be combined with --count")
    if task_timeout is not None and not 0 < task_timeout <= 86400:
        raise typer.BadParameter(
            "must be more than 0 and at most 86400", param_hint="--task-timeout"
        )
    until = _deadline(deadline)
    if REMOTE.server is not None and (
        priority is not Priority.NORMAL or max_attempts != 3 or task_timeout or until
    ):
        raise typer.BadParameter(
            "--priority, --max-attempts, --task-timeout and --deadline need direct Redis access: "
            "the gateway sends tasks with the fleet's defaults"
        )

    async def body(client: FleetClient) -> None:
        specs = (
            TaskSpec(
                handler,
                task_input,
                priority,
                task_id if count == 1 else None,
                max_attempts,
                task_timeout,
                until,
            )
            for _ in range(count)
        )
        ids: list[str] = []
        created = 0
        with Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            TaskProgressColumn(),
            TimeElapsedColumn(),
            console=errors,
            disable=count < 50,
        ) as progress:
            bar = progress.add_task("submitting", total=count)
            async for batch in client.submit_many(specs):
                ids += [s.task_id for s in batch]
                created += sum(s.created for s in batch)
                progress.advance(bar, len(batch))
        if count == 1:
            console.print(
                f"task {escape(ids[0])} {'submitted' if created else 'already submitted (same id)'}"
            )
        else:
            console.print(f"submitted {created} task(s) to {escape(namespace)}/{escape(fleet)}")
        if not wait:
            return
        results = await asyncio.gather(*(client.wait(i, timeout) for i in ids))
        if count == 1:
            _show(results[0], as_json=True)
            return
        failed = sum(r.status is ResultStatus.FAILED for r in results)
        console.print(f"{len(results) - failed} succeeded, {failed} failed")

    await with_client(redis_url, namespace, fleet, body, max_payload_bytes, remote=True)


@task_app.command("get")
@run
async def get(
    fleet: Fleet,
    task_id: TaskId,
    as_json: AsJson = False,
    namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
) -> None:
    """Show a task's result (exit 4: none yet, 3: it failed)."""

    async def body(client: FleetClient) -> None:
        result = await client.result(task_id)
        if result is None:
            console.print(f"task {escape(task_id)} has no result (yet)")
            raise typer.Exit(4)
        _show(result, as_json)

    await with_client(redis_url, namespace, fleet, body, remote=True)


@task_app.command("wait")
@run
async def wait_for_result(
    fleet: Fleet,
    task_id: TaskId,
    timeout: Annotated[float, typer.Option("--timeout", help="Seconds to wait.")] = 60.0,
    as_json: AsJson = False,
    namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
) -> None:
    """Wait for a task's result and show it (exit 1: timed out, 3: it failed)."""

    async def body(client: FleetClient) -> None:
        _show(await client.wait(task_id, timeout), as_json)

    await with_client(redis_url, namespace, fleet, body, remote=True)


@task_app.command("watch")
@run
async def watch(
    fleet: Fleet,
    since: Annotated[
        str, typer.Option("--since", help="'$' for new results only, '0' for all.")
    ] = "$",
    limit: Annotated[
        int, typer.Option("--limit", help="Stop after this many results (0: never).")
    ] = 0,
    namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
) -> None:
    """Follow the fleet's results as they are stored (Ctrl-C to stop).

    An entry of the result stream that is not a valid result is skipped with one warning line.
    """
    skipped = 0

    def warn(entry: MalformedEntry) -> None:
        nonlocal skipped
        skipped += 1
        errors.print(
            f"[yellow]warning:[/] skipped entry {clip(entry.entry_id, 40)} of the result stream, "
            f"not a valid result ({skipped} so far): {clip(entry.reason, 40)}: "
            f"{clip(entry.detail)}",
            highlight=False,
        )

    async def body(client: TaskClient) -> None:
        seen = 0
        async for _, result in client.follow(since, on_malformed=warn):
            console.print(result_line(result), highlight=False)
            seen += 1
            if limit and seen >= limit:
                return

    await with_client(redis_url, namespace, fleet, body)
