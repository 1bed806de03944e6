"""`newfuse`: submit tasks to a fleet, follow results, inspect agents and dead letters.

Talks to the fleet's Redis directly (the same keys the agents use), so it works wherever the Redis
URL reaches: NEWFUSE_REDIS_URL or --redis-url. Errors are one readable line and a non-zero exit.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import os
import sys
from collections.abc import Awaitable, Callable, Coroutine
from functools import wraps
from typing import Annotated, Any, TypeVar

import orjson
import typer
from opentelemetry import trace
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskProgressColumn,
    TextColumn,
    TimeElapsedColumn,
)
from rich.table import Table

from newfuse.adapters.taskclient import FleetNotFoundError, TaskClient, TaskSpec
from newfuse.tracing import TraceExporter, configure_tracing
from newfuse.wire.tasks import Priority, ResultStatus

app = typer.Typer(help=__doc__, no_args_is_help=True, pretty_exceptions_enable=False)
task_app = typer.Typer(help="Submit tasks and watch results.", no_args_is_help=True)
app.add_typer(task_app, name="task")
# Piped output (CI logs, `| less`) gets a wide console instead of rich's 80-column default.
console = Console(width=None if sys.stdout.isatty() else 160)
errors = Console(stderr=True)
T = TypeVar("T")

Fleet = Annotated[str, typer.Argument(help="Name of the NewFuseAgent fleet.")]
Namespace = Annotated[
    str, typer.Option("--namespace", "-n", help="Kubernetes namespace of the fleet.")
]
RedisUrl = Annotated[
    str, typer.Option("--redis-url", envvar="NEWFUSE_REDIS_URL", help="Redis URL of the fleet.")
]
DEFAULT_NAMESPACE = os.environ.get("NEWFUSE_NAMESPACE", "default")
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"


cli_tracer = trace.get_tracer("newfuse.cli")


def _signing_key() -> bytes | None:
    key = os.environ.get("NEWFUSE_SIGNING_KEY")
    return key.encode() if key else None


def _run(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async command, turning known failures into one clear line and exit code 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            # One trace per command: every task it submits is a child of this span.
            with cli_tracer.start_as_current_span(f"newfuse.cli.{fn.__name__}"):
                return asyncio.run(fn(*args, **kwargs))
        except FleetNotFoundError as exc:
            errors.print(f"[red]error:[/] {exc}")
        except RedisConnectionError as exc:
            errors.print(
                f"[red]error:[/] cannot reach Redis ({exc}); set --redis-url or NEWFUSE_REDIS_URL "
                "(and NEWFUSE_REDIS_CA_FILE for a private CA)"
            )
        except RedisError as exc:
            errors.print(f"[red]error:[/] Redis refused the request: {exc}")
        except TimeoutError as exc:
            errors.print(f"[red]error:[/] {exc}")
        raise typer.Exit(1)

    return wrapper


async def _with_client(
    url: str, namespace: str, fleet: str, body: Callable[[TaskClient], Awaitable[T]]
) -> T:
    client = TaskClient.from_url(
        url,
        namespace,
        fleet,
        sender="newfuse-cli",
        signing_key=_signing_key(),
        ca_file=os.environ.get("NEWFUSE_REDIS_CA_FILE"),
    )
    try:
        await client.ensure_fleet()
        return await body(client)
    finally:
        await client.aclose()


def _parse_payload(payload: str) -> Any:
    try:
        return orjson.loads(payload)
    except orjson.JSONDecodeError:
        return payload  # plain text is a valid input too


@task_app.command("submit")
@_run
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
    namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
) -> None:
    """Submit a task (or --count of them, with a progress bar)."""
    task_input = _parse_payload(payload)
    if count > 1 and task_id is not None:
        raise typer.BadParameter("--id names one task; it cannot be combined with --count")

    async def body(client: TaskClient) -> None:
        specs = (
            TaskSpec(handler, task_input, priority, task_id if count == 1 else None, max_attempts)
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
                f"task {ids[0]} {'submitted' if created else 'already submitted (same id)'}"
            )
        else:
            console.print(f"submitted {created} task(s) to {namespace}/{fleet}")
        if not wait:
            return
        results = await asyncio.gather(*(client.wait(i, timeout) for i in ids))
        if count == 1:
            console.print_json(results[0].model_dump_json())
            if results[0].status is ResultStatus.FAILED:
                raise typer.Exit(3)
            return
        failed = sum(r.status is ResultStatus.FAILED for r in results)
        console.print(f"{len(results) - failed} succeeded, {failed} failed")

    await _with_client(redis_url, namespace, fleet, body)


@task_app.command("watch")
@_run
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
    """Follow the fleet's results as they are stored (Ctrl-C to stop)."""

    async def body(client: TaskClient) -> None:
        seen = 0
        async for _, result in client.follow(since):
            colour = "green" if result.status is ResultStatus.SUCCEEDED else "red"
            output = json.dumps(result.output) if result.output is not None else result.error
            console.print(
                f"[{colour}]{result.status:<9}[/] {result.task_id}  by {result.agent_id} "
                f"in {result.latency_ms:.1f} ms  {str(output)[:100]}"
            )
            seen += 1
            if limit and seen >= limit:
                return

    await _with_client(redis_url, namespace, fleet, body)


def _age(when: dt.datetime | None) -> str:
    if when is None:
        return "-"
    seconds = (dt.datetime.now(dt.UTC) - when).total_seconds()
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


@app.command("agents")
@_run
async def agents(
    fleet: Fleet, namespace: Namespace = DEFAULT_NAMESPACE, redis_url: RedisUrl = DEFAULT_REDIS
) -> None:
    """List the fleet's agents: state, heartbeat age and metrics."""

    async def body(client: TaskClient) -> None:
        table = Table(title=f"agents of {namespace}/{fleet}")
        for column in (
            "agent",
            "status",
            "revision",
            "heartbeat",
            "handled",
            "completed",
            "failed",
            "p95 ms",
        ):
            table.add_column(
                column, justify="right" if column not in ("agent", "status", "revision") else "left"
            )
        for update in await client.agents():
            m = update.state.metrics
            table.add_row(
                update.agent_id,
                update.state.status,
                update.state.revision or "-",
                _age(update.timestamp),
                str(m.requests_handled),
                str(m.tasks_completed),
                str(m.tasks_failed),
                f"{m.latency_p95_ms:.1f}" if m.latency_p95_ms is not None else "-",
            )
        console.print(table)

    await _with_client(redis_url, namespace, fleet, body)


@app.command("dlq")
@_run
async def dlq(
    fleet: Fleet,
    requeue: Annotated[
        list[str] | None, typer.Option("--requeue", help="Dead letter id(s) to resubmit.")
    ] = None,
    requeue_all: Annotated[
        bool, typer.Option("--requeue-all", help="Resubmit every requeueable one.")
    ] = False,
    count: Annotated[int, typer.Option("--count", help="How many to list.")] = 50,
    namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
) -> None:
    """Inspect dead letters, and requeue them."""

    async def body(client: TaskClient) -> None:
        letters = await client.dead_letters(count if not requeue_all else 10_000)
        targets = [e for e, _ in letters] if requeue_all else list(requeue or [])
        if targets:
            done = 0
            for entry_id in targets:
                submitted = await client.requeue_dead_letter(entry_id)
                if submitted is None:
                    errors.print(f"[yellow]skipped[/] {entry_id}: it holds no valid task")
                else:
                    done += 1
            console.print(f"requeued {done} task(s)")
            return
        table = Table(title=f"dead letters of {namespace}/{fleet} ({len(letters)} shown)")
        for column in ("id", "reason", "task", "attempts", "agent", "when", "detail"):
            table.add_column(column)
        for entry_id, letter in letters:
            table.add_row(
                entry_id,
                letter.reason,
                letter.task_id or "-",
                str(letter.attempts),
                letter.agent_id,
                _age(letter.at),
                letter.detail[:80],
            )
        console.print(table)

    await _with_client(redis_url, namespace, fleet, body)


rollout_app = typer.Typer(help="Watch and steer a fleet's phased rollout.", no_args_is_help=True)
app.add_typer(rollout_app, name="rollout")
Kubeconfig = Annotated[
    str | None, typer.Option("--kubeconfig", envvar="KUBECONFIG", help="Kubeconfig of the cluster.")
]


def _api_client(kubeconfig: str | None) -> Any:
    """An API client from the kubeconfig, or one clear line and exit code 1."""
    from kubernetes import config as k8s_config

    try:
        return k8s_config.new_client_from_config(config_file=kubeconfig)  # type: ignore[no-untyped-call]
    except (k8s_config.ConfigException, OSError) as exc:
        errors.print(f"[red]error:[/] no usable kubeconfig ({exc}); set --kubeconfig or KUBECONFIG")
        raise typer.Exit(1) from None


def _custom(kubeconfig: str | None) -> Any:
    from kubernetes import client as k8s_client

    return k8s_client.CustomObjectsApi(_api_client(kubeconfig))


def _whoami(kubeconfig: str | None) -> str:
    """The identity the API server sees for this kubeconfig (SelfSubjectReview), for audit."""
    from kubernetes import client as k8s_client

    api = _api_client(kubeconfig)
    try:
        review: Any = k8s_client.AuthenticationV1Api(api).create_self_subject_review(
            k8s_client.V1SelfSubjectReview()
        )
        return str(review.status.user_info.username)
    except Exception:
        # An old or locked-down API server cannot say who we are: attribute to the local user
        # (marked as such) rather than fail the control action itself.
        return f"{os.environ.get('USER', 'unknown')} (local user; API identity unavailable)"


def _audit_stamp(kubeconfig: str | None) -> str:
    return f"{_whoami(kubeconfig)}@{dt.datetime.now(dt.UTC).isoformat(timespec='seconds')}"


def _fleet_call(
    kubeconfig: str | None, namespace: str, fleet: str, patch: dict[str, Any] | None = None
) -> dict[str, Any]:
    """GET (or merge-PATCH) the fleet, with one clear line on any API error."""
    from kubernetes.client.exceptions import ApiException

    from newfuse.api.v1alpha1 import GROUP, PLURAL, VERSION

    custom = _custom(kubeconfig)
    try:
        if patch is None:
            body = custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, fleet)
        else:
            body = custom.patch_namespaced_custom_object(
                GROUP, VERSION, namespace, PLURAL, fleet, patch
            )
    except ApiException as exc:
        what = "not found" if exc.status == 404 else f"refused: {exc.reason}"
        errors.print(f"[red]error:[/] fleet {fleet!r} in namespace {namespace!r}: {what}")
        raise typer.Exit(1) from None
    return dict(body)


def _action(fleet: str, verb: str, namespace: str, kubeconfig: str | None) -> None:
    from newfuse.core.naming import ROLLOUT_ACTION_ANNOTATION, ROLLOUT_ACTION_BY_ANNOTATION

    stamp = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    patch = {
        "metadata": {
            "annotations": {
                ROLLOUT_ACTION_ANNOTATION: f"{verb}@{stamp}",
                ROLLOUT_ACTION_BY_ANNOTATION: _audit_stamp(kubeconfig),
            }
        }
    }
    _fleet_call(kubeconfig, namespace, fleet, patch)
    console.print(f"{verb} requested for {namespace}/{fleet}")


def _rollout_table(body: dict[str, Any]) -> Table:
    status = body.get("status") or {}
    rollout = status.get("rollout")
    name = body["metadata"]["name"]
    if not rollout:
        strategy = (body["spec"].get("rollout") or {}).get("strategy", "Replace")
        table = Table(title=f"{name}: no phased rollout (strategy {strategy})")
        table.add_column("phase")
        table.add_row(str(status.get("phase", "-")))
        return table
    verdict = rollout.get("lastVerdict") or {}
    measured = verdict.get("measured") or {}
    title = (
        f"{name}: {rollout['phase']} - {rollout['stage']} step {rollout['step']}, "
        f"{rollout['canaryAgents']}/{body['spec'].get('replicas')} agents on "
        f"{rollout['canaryRevision']} "
        f"(stable {rollout['stableRevision']})"
    )
    table = Table(title=title, caption=rollout.get("message") or None)
    for column in (
        "when",
        "stage",
        "step",
        "canary",
        "event",
        "verdict",
        "tasks",
        "error rate",
        "p95 ms",
        "detail",
    ):
        table.add_column(column)
    for entry in (rollout.get("history") or [])[-15:]:
        v = entry.get("verdict") or {}
        m = v.get("measured") or {}
        error_rate = m.get("errorRate")
        table.add_row(
            str(entry["at"])[11:19],
            entry["stage"],
            str(entry["step"]),
            str(entry["canaryAgents"]),
            entry["reason"],
            v.get("result", ""),
            str(m.get("tasks", "")),
            "" if error_rate is None else f"{error_rate:.1%}",
            "" if m.get("p95LatencyMs") is None else f"{m['p95LatencyMs']:.1f}",
            (entry.get("message") or "")[:60],
        )
    if verdict:
        table.add_section()
        table.add_row(
            "last",
            "",
            "",
            "",
            "gate",
            verdict.get("result", ""),
            str(measured.get("tasks", "")),
            "" if measured.get("errorRate") is None else f"{measured['errorRate']:.1%}",
            "",
            verdict.get("reason", "")[:60],
        )
    return table


@rollout_app.command("status")
def rollout_status(
    fleet: Fleet,
    watch: Annotated[
        bool, typer.Option("--watch", "-w", help="Keep updating until Ctrl-C.")
    ] = False,
    namespace: Namespace = DEFAULT_NAMESPACE,
    kubeconfig: Kubeconfig = None,
) -> None:
    """Phase, step, gate numbers and history of the fleet's rollout."""
    if not watch:
        console.print(_rollout_table(_fleet_call(kubeconfig, namespace, fleet)))
        return
    import time

    from rich.live import Live

    with Live(
        _rollout_table(_fleet_call(kubeconfig, namespace, fleet)),
        console=console,
        refresh_per_second=2,
    ) as live:
        try:
            while True:
                time.sleep(1)
                live.update(_rollout_table(_fleet_call(kubeconfig, namespace, fleet)))
        except KeyboardInterrupt:
            return


def _set_paused(fleet: str, paused: bool, namespace: str, kubeconfig: str | None) -> None:
    from newfuse.core.naming import PAUSED_BY_ANNOTATION

    patch = {
        "metadata": {"annotations": {PAUSED_BY_ANNOTATION: _audit_stamp(kubeconfig)}},
        "spec": {"rollout": {"paused": paused}},
    }
    _fleet_call(kubeconfig, namespace, fleet, patch)
    console.print(
        f"{namespace}/{fleet}: rollout {'paused' if paused else 'resumed'} "
        f"(spec.rollout.paused={str(paused).lower()})"
    )


@rollout_app.command("pause")
def rollout_pause(
    fleet: Fleet, namespace: Namespace = DEFAULT_NAMESPACE, kubeconfig: Kubeconfig = None
) -> None:
    """Hold the rollout where it is (sets spec.rollout.paused, so GitOps sees it)."""
    _set_paused(fleet, True, namespace, kubeconfig)


@rollout_app.command("resume")
def rollout_resume(
    fleet: Fleet, namespace: Namespace = DEFAULT_NAMESPACE, kubeconfig: Kubeconfig = None
) -> None:
    """Continue a paused rollout."""
    _set_paused(fleet, False, namespace, kubeconfig)


@rollout_app.command("promote")
def rollout_promote(
    fleet: Fleet,
    full: Annotated[
        bool, typer.Option("--full", help="Skip every remaining step: cut over now.")
    ] = False,
    namespace: Namespace = DEFAULT_NAMESPACE,
    kubeconfig: Kubeconfig = None,
) -> None:
    """Pass the current gate (or, with --full, every remaining one)."""
    _action(fleet, "promote-full" if full else "promote", namespace, kubeconfig)


@rollout_app.command("abort")
def rollout_abort(
    fleet: Fleet, namespace: Namespace = DEFAULT_NAMESPACE, kubeconfig: Kubeconfig = None
) -> None:
    """Send every agent back to the stable revision."""
    _action(fleet, "abort", namespace, kubeconfig)


@rollout_app.command("retry")
def rollout_retry(
    fleet: Fleet, namespace: Namespace = DEFAULT_NAMESPACE, kubeconfig: Kubeconfig = None
) -> None:
    """Start an aborted or rolled-back rollout again from phase 1."""
    _action(fleet, "retry", namespace, kubeconfig)


def main() -> None:
    """Console-script entry point."""
    exporter = os.environ.get("NEWFUSE_TRACE_EXPORTER", TraceExporter.NONE.value)
    try:
        configure_tracing(TraceExporter(exporter), "newfuse-cli")
    except ValueError:
        choices = ", ".join(e.value for e in TraceExporter)
        errors.print(f"[red]error:[/] NEWFUSE_TRACE_EXPORTER={exporter!r}: use one of {choices}")
        raise SystemExit(2) from None
    app()


if __name__ == "__main__":
    main()
