"""What every `newfuse` command shares: the Typer apps, the consoles and the common options.

`run` is the one place that turns known failures into one readable line and exit code 1, never a
traceback.
"""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Iterable
from dataclasses import dataclass
from functools import wraps
from typing import Annotated, Any, Protocol, TypeVar

import httpx
import typer
from a2a.utils.errors import A2AError
from opentelemetry import trace
from pydantic import ValidationError
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from rich.console import Console
from rich.markup import escape

from newfuse.adapters.taskclient import DEFAULT_MAX_PAYLOAD_BYTES, Submitted, TaskClient, TaskSpec
from newfuse.adapters.taskerrors import (
    BudgetExceededError,
    FleetNotFoundError,
    MalformedResultError,
    PayloadTooLargeError,
)
from newfuse.cli.remote import GatewayClient, GatewayError, find_token
from newfuse.wire.state import StateUpdate
from newfuse.wire.taskpolicy import ENV_VARS
from newfuse.wire.tasks import ResultPayload

app = typer.Typer(
    help="Submit tasks to a fleet, follow results, inspect agents and dead letters.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
task_app = typer.Typer(help="Submit tasks and watch results.", no_args_is_help=True)
app.add_typer(task_app, name="task")
# Piped output (CI logs, `| less`) gets a wide console instead of rich's 80-column default,
# unless COLUMNS says how wide.
_PIPED_WIDTH = None if os.environ.get("COLUMNS") else 160
console = Console(width=None if sys.stdout.isatty() else _PIPED_WIDTH)
errors = Console(stderr=True, width=None if sys.stderr.isatty() else _PIPED_WIDTH)
T = TypeVar("T")

Fleet = Annotated[str, typer.Argument(help="Name of the NewFuseAgent fleet.")]
Namespace = Annotated[
    str, typer.Option("--namespace", "-n", help="Kubernetes namespace of the fleet.")
]
RedisUrl = Annotated[
    str, typer.Option("--redis-url", envvar="NEWFUSE_REDIS_URL", help="Redis URL of the fleet.")
]
# The fleet policy's own variable (TaskPolicy is the one home of these names).
MAX_PAYLOAD_ENV = next(var for var, field in ENV_VARS.items() if field == "max_payload_bytes")
MaxPayload = Annotated[
    int,
    typer.Option(
        "--max-payload-bytes",
        envvar=MAX_PAYLOAD_ENV,
        min=1,
        help="Refuse a task whose encoded envelope is larger than this (the fleet's limit).",
    ),
]
DEFAULT_NAMESPACE = os.environ.get("NEWFUSE_NAMESPACE", "default")
DEFAULT_REDIS = "redis://127.0.0.1:6379/0"
DEFAULT_MAX_PAYLOAD = DEFAULT_MAX_PAYLOAD_BYTES

cli_tracer = trace.get_tracer("newfuse.cli")


def _key(var: str) -> bytes | None:
    key = os.environ.get(var)
    return key.encode() if key else None


def fail(message: str) -> None:
    """Print one error line (``message`` is plain text, not markup)."""
    errors.print(f"[red]error:[/] {escape(message)}")


def run(fn: Callable[..., Coroutine[Any, Any, T]]) -> Callable[..., T]:
    """Run an async command, turning known failures into one clear line and exit code 1."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        try:
            # One trace per command: every task it submits is a child of this span.
            with cli_tracer.start_as_current_span(f"newfuse.cli.{fn.__name__}"):
                return asyncio.run(fn(*args, **kwargs))
        except (
            FleetNotFoundError,
            PayloadTooLargeError,
            MalformedResultError,
            BudgetExceededError,
        ) as exc:
            fail(str(exc))
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            fail(f"invalid task: {where}: {first['msg']}")
        except RedisConnectionError as exc:
            fail(
                f"cannot reach Redis ({exc}); set --redis-url or NEWFUSE_REDIS_URL "
                "(and NEWFUSE_REDIS_CA_FILE for a private CA)"
            )
        except RedisError as exc:
            fail(f"Redis refused the request: {exc}")
        except (TimeoutError, GatewayError, A2AError) as exc:
            fail(str(exc))
        except httpx.HTTPError as exc:
            fail(f"cannot reach the gateway ({type(exc).__name__}: {exc})")
        raise typer.Exit(1)

    return wrapper


class FleetClient(Protocol):
    """What the task commands that also work through the gateway use of a fleet client."""

    async def ensure_fleet(self) -> None: ...
    def submit_many(self, specs: Iterable[TaskSpec]) -> AsyncIterator[list[Submitted]]: ...
    async def result(self, task_id: str) -> ResultPayload | None: ...
    async def wait(self, task_id: str, timeout: float) -> ResultPayload: ...
    async def agents(self) -> list[StateUpdate]: ...
    async def aclose(self) -> None: ...


@dataclass
class Remote:
    """`newfuse --server URL [--token T]`: the gateway the task commands go through, if any."""

    server: str | None = None
    token: str | None = None


REMOTE = Remote()


@app.callback()
def _through_the_gateway(
    server: Annotated[
        str | None,
        typer.Option(
            "--server",
            envvar="NEWFUSE_SERVER",
            help="The fleet API gateway's URL: task submit/get/wait and agents go through it "
            "(no Redis credentials needed).",
        ),
    ] = None,
    token: Annotated[
        str | None,
        typer.Option(
            "--token",
            envvar="NEWFUSE_TOKEN",
            help="Bearer token for --server (default: NEWFUSE_TOKEN_FILE, the kubeconfig's "
            "user, or the pod's ServiceAccount token).",
        ),
    ] = None,
) -> None:
    REMOTE.server, REMOTE.token = server, token


async def with_remote(namespace: str, fleet: str, body: Callable[[Any], Awaitable[T]]) -> T:
    """Run ``body`` with a client of the fleet on the gateway (``--server``)."""
    assert REMOTE.server is not None
    client = GatewayClient(REMOTE.server, namespace, fleet, find_token(REMOTE.token))
    try:
        await client.ensure_fleet()
        return await body(client)
    finally:
        await client.aclose()


async def with_client(
    url: str,
    namespace: str,
    fleet: str,
    body: Callable[[TaskClient], Awaitable[T]],
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD,
    *,
    remote: bool = False,
) -> T:
    """Run ``body`` with a client of the fleet, which must exist.

    With ``remote`` the command also works through the gateway: under ``--server`` the client is
    a GatewayClient (``body`` then uses only FleetClient's methods); without it, --server is an
    error that says the command needs Redis.
    """
    if REMOTE.server is not None:
        if not remote:
            raise GatewayError(
                "this command reads the fleet's Redis: run it without --server (NEWFUSE_SERVER)"
            )
        return await with_remote(namespace, fleet, body)
    client = TaskClient.from_url(
        url,
        namespace,
        fleet,
        sender="newfuse-cli",
        signing_key=_key("NEWFUSE_SIGNING_KEY"),
        encryption_key=_key("NEWFUSE_ENCRYPTION_KEY"),
        ca_file=os.environ.get("NEWFUSE_REDIS_CA_FILE"),
        max_payload_bytes=max_payload_bytes,
    )
    try:
        await client.ensure_fleet()
        return await body(client)
    finally:
        await client.aclose()
