"""`newfuse agents` and `newfuse dlq`: what a fleet's agents report, and the work they gave up on.

A dead letter is shown with its reason, attempts and times, and with the attempt history its task
carried (when its raw message is a task), so "why did this task die" is answered in one place.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from newfuse.adapters.taskclient import TaskClient
from newfuse.adapters.taskerrors import RequeueSkippedError
from newfuse.cli.common import (
    DEFAULT_NAMESPACE,
    DEFAULT_REDIS,
    Fleet,
    FleetClient,
    Namespace,
    RedisUrl,
    app,
    console,
    errors,
    run,
    with_client,
)
from newfuse.cli.render import age, clip, dead_letter_table


@app.command("agents")
@run
async def agents(
    fleet: Fleet, namespace: Namespace = DEFAULT_NAMESPACE, redis_url: RedisUrl = DEFAULT_REDIS
) -> None:
    """List the fleet's agents: state, heartbeat age and metrics."""

    async def body(client: FleetClient) -> None:
        table = Table(title=f"agents of {escape(namespace)}/{escape(fleet)}")
        for column in ("agent", "status", "revision"):
            table.add_column(column)
        for column in ("heartbeat", "handled", "completed", "failed", "p95 ms"):
            table.add_column(column, justify="right")
        for update in await client.agents():
            m = update.state.metrics
            table.add_row(
                clip(update.agent_id, 64),
                clip(update.state.status, 20),
                clip(update.state.revision or "-", 40),
                age(update.timestamp),
                str(m.requests_handled),
                str(m.tasks_completed),
                str(m.tasks_failed),
                f"{m.latency_p95_ms:.1f}" if m.latency_p95_ms is not None else "-",
            )
        console.print(table)

    await with_client(redis_url, namespace, fleet, body, remote=True)


@app.command("dlq")
@run
async def dlq(
    fleet: Fleet,
    requeue: Annotated[
        list[str] | None, typer.Option("--requeue", help="Dead letter id(s) to resubmit.")
    ] = None,
    requeue_all: Annotated[
        bool, typer.Option("--requeue-all", help="Resubmit every requeueable one.")
    ] = False,
    force: Annotated[
        bool,
        typer.Option(
            "--force",
            help="Requeue security refusals too (unsigned, forged, replayed...): they get signed.",
        ),
    ] = False,
    count: Annotated[int, typer.Option("--count", help="How many to list.")] = 50,
    namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
) -> None:
    """Inspect dead letters (reason, attempts, times, attempt history), and requeue them."""

    async def body(client: TaskClient) -> None:
        letters = await client.dead_letters(count if not requeue_all else 10_000)
        targets = [e for e, _ in letters] if requeue_all else list(requeue or [])
        if targets:
            done = 0
            for entry_id in targets:
                try:
                    submitted = await client.requeue_dead_letter(entry_id, force=force)
                except KeyError:
                    errors.print(f"[yellow]skipped[/] {escape(entry_id)}: no such dead letter")
                    continue
                except RequeueSkippedError as skipped:
                    errors.print(f"[yellow]skipped[/] {escape(entry_id)}: {escape(skipped.reason)}")
                    continue
                if submitted is None:
                    errors.print(f"[yellow]skipped[/] {escape(entry_id)}: it holds no valid task")
                else:
                    done += 1
            console.print(f"requeued {done} task(s)")
            return
        title = f"dead letters of {escape(namespace)}/{escape(fleet)} ({len(letters)} shown)"
        console.print(dead_letter_table(title, letters))

    await with_client(redis_url, namespace, fleet, body)
