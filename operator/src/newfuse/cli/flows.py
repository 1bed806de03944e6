"""`newfuse workflow` and `newfuse tx`: submit, follow and stop workflows and transactions.

Both are coordinator tasks on a fleet whose agents have the built-in `workflow` and `saga`
handlers (newfuse.core.workflow, newfuse.core.saga). A definition is checked before anything is
submitted: a cycle is refused, naming it.
"""

from __future__ import annotations

import json
import os
import uuid
from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from pydantic import ValidationError
from rich.markup import escape
from rich.table import Table

from newfuse.adapters.flows import SAGA, WORKFLOW, ChildState, FlowStore
from newfuse.adapters.taskclient import TaskClient
from newfuse.cli.common import (
    DEFAULT_NAMESPACE,
    DEFAULT_REDIS,
    Fleet,
    Namespace,
    RedisUrl,
    app,
    console,
    fail,
    run,
    with_client,
)
from newfuse.cli.render import clip
from newfuse.core import saga as tx
from newfuse.core import workflow as dag

workflow_app = typer.Typer(help="Workflows: tasks with dependencies across fleets.")
tx_app = typer.Typer(help="Transactions (sagas): operations undone by compensations on failure.")
app.add_typer(workflow_app, name="workflow", no_args_is_help=True)
app.add_typer(tx_app, name="tx", no_args_is_help=True)
File = Annotated[Path, typer.Option("--file", "-f", help="The definition (YAML or JSON).")]
FlowId = Annotated[str, typer.Argument(help="The workflow's or transaction's id.")]
NewId = Annotated[str | None, typer.Option("--id", help="Its id (default: `id` in the file).")]
Wait = Annotated[float, typer.Option("--wait", help="Seconds to wait for the end (0: do not).")]


def _load(path: Path, model: type[dag.Workflow] | type[tx.Saga]) -> tuple[str, dict[str, Any]]:
    """The id and the checked definition; one clear line and exit 1 if it is not valid."""
    try:
        body = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        fail(f"{path}: {exc}")
        raise typer.Exit(1) from None
    if not isinstance(body, dict):
        fail(f"{path}: expected a mapping")
        raise typer.Exit(1)
    flow_id = str(body.pop("id", "") or f"{model.__name__.lower()}-{uuid.uuid4().hex[:8]}")
    try:
        model.model_validate(body)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "definition"
        fail(f"{path}: {where}: {first['msg'].removeprefix('Value error, ')}")
        raise typer.Exit(1) from None
    return flow_id, body


async def _with_flows(url: str, namespace: str, fleet: str, body: Any) -> Any:
    key = os.environ.get("NEWFUSE_SIGNING_KEY")

    async def on(client: TaskClient) -> Any:
        return await body(FlowStore(client, key.encode() if key else None))

    return await with_client(url, namespace, fleet, on)


async def _submit(
    kind: str, url: str, ns: str, fleet: str, flow_id: str, spec: Any, wait: float
) -> None:
    async def body(flows: FlowStore) -> None:
        created = await flows.submit(kind, flow_id, spec)
        console.print(f"{kind} {escape(flow_id)} {'submitted' if created else 'already submitted'}")
        if wait > 0:
            result = await flows.tasks.wait(flow_id, wait)
            console.print_json(json.dumps(result.output if result.output is not None else
                                          {"error": result.error}))  # fmt: skip

    await _with_flows(url, ns, fleet, body)


def _table(title: str, rows: list[ChildState], status: str) -> Table:
    table = Table(title=f"{title}: {status}")
    for column in ("task", "fleet", "handler", "state", "output / error"):
        table.add_column(column)
    for row in rows:
        table.add_row(clip(row.id, 40), clip(row.fleet, 30), clip(row.handler, 20), row.state,
                      clip(row.detail, 60))  # fmt: skip
    return table


@workflow_app.command("submit")
@run
async def workflow_submit(
    fleet: Fleet, file: File, flow_id: NewId = None, wait: Wait = 0,
    namespace: Namespace = DEFAULT_NAMESPACE, redis_url: RedisUrl = DEFAULT_REDIS,
) -> None:  # fmt: skip
    """Check the workflow (a cycle is refused) and submit it to FLEET, its coordinator."""
    found_id, spec = _load(file, dag.Workflow)
    await _submit(WORKFLOW, redis_url, namespace, fleet, flow_id or found_id, spec, wait)


@workflow_app.command("status")
@run
async def workflow_status(
    fleet: Fleet, flow_id: FlowId, namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
) -> None:  # fmt: skip
    """Every task of the workflow with its state."""

    async def body(flows: FlowStore) -> None:
        spec = dag.Workflow.model_validate(await _definition(flows, flow_id, WORKFLOW))
        ended = await flows.result(flow_id)
        status = "running" if ended is None else ended.status.value
        rows = await flows.workflow_tasks(flow_id, spec)
        console.print(_table(f"workflow {escape(flow_id)}", rows, status))

    await _with_flows(redis_url, namespace, fleet, body)


@workflow_app.command("cancel")
@run
async def workflow_cancel(
    fleet: Fleet, flow_id: FlowId, namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
) -> None:  # fmt: skip
    """Cancel the workflow and its tasks that have not ended."""

    async def body(flows: FlowStore) -> None:
        spec = dag.Workflow.model_validate(await _definition(flows, flow_id, WORKFLOW))
        children = [(t.fleet, dag.child_id(flow_id, t)) for t in spec.tasks]
        console.print(f"cancelled {await flows.cancel(flow_id, children)} task(s)")

    await _with_flows(redis_url, namespace, fleet, body)


async def _definition(flows: FlowStore, flow_id: str, kind: str) -> dict[str, Any]:
    found = await flows.definition(flow_id)
    if found is None or found[0] != kind:
        fail(f"no {kind} {flow_id!r} on {flows.keys.namespace}/{flows.keys.fleet}")
        raise typer.Exit(1)
    return found[1]


@tx_app.command("submit")
@run
async def tx_submit(
    fleet: Fleet, file: File, flow_id: NewId = None, wait: Wait = 0,
    namespace: Namespace = DEFAULT_NAMESPACE, redis_url: RedisUrl = DEFAULT_REDIS,
) -> None:  # fmt: skip
    """Submit a transaction to FLEET, its coordinator."""
    found_id, spec = _load(file, tx.Saga)
    await _submit(SAGA, redis_url, namespace, fleet, flow_id or found_id, spec, wait)


@tx_app.command("status")
@run
async def tx_status(
    fleet: Fleet, flow_id: FlowId, namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
) -> None:  # fmt: skip
    """The transaction's status (active, committed, rolled_back) and each operation's state."""

    async def body(flows: FlowStore) -> None:
        spec = tx.Saga.model_validate(await _definition(flows, flow_id, SAGA))
        ended = await flows.result(flow_id)
        status = tx.TxStatus.ACTIVE.value
        if ended is not None:
            output = ended.output if isinstance(ended.output, dict) else {}
            status = str(output.get("status", f"failed: {ended.error}"))
        rows = await flows.operations(flow_id, spec)
        console.print(_table(f"transaction {escape(flow_id)}", rows, status))

    await _with_flows(redis_url, namespace, fleet, body)


@tx_app.command("abort")
@run
async def tx_abort(
    fleet: Fleet, flow_id: FlowId, namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
) -> None:  # fmt: skip
    """Roll the transaction back: its unfinished operations fail, the done ones are compensated."""

    async def body(flows: FlowStore) -> None:
        spec = tx.Saga.model_validate(await _definition(flows, flow_id, SAGA))
        console.print(f"cancelled {await flows.abort(flow_id, spec)} operation(s); rolling back")

    await _with_flows(redis_url, namespace, fleet, body)
