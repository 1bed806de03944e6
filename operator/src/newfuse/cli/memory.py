"""`newfuse memory`: a fleet's shared memory from a terminal: remember, search, forget, move it.

The commands reach the fleet's Redis the way the task commands do (`with_client`: the fleet must
exist, its credentials are the URL's), and write as the fleet's operator: revision `cli`, trusted,
so nothing the CLI writes is quarantined. `export` writes JSON lines, one MemoryRecord each, of
the memories every agent may see (unexpired, unquarantined); `import` reads them back, validating
every line first-class: a bad line is named with its field and skipped, never the whole file, and
the exit code says some were bad. Import re-embeds with the fleet's active model (vectors are not
exported: another fleet may use another model) and is idempotent by id.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING, Annotated, Any, Final, TypeVar, cast

import typer
from pydantic import ValidationError
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from newfuse.adapters.memoryport import MemoryFullError
from newfuse.adapters.taskclient import TaskClient
from newfuse.cli.common import (
    DEFAULT_NAMESPACE,
    DEFAULT_REDIS,
    Fleet,
    Namespace,
    RedisUrl,
    app,
    console,
    errors,
    fail,
    run,
    with_client,
)
from newfuse.cli.render import clip
from newfuse.wire.memory import DEFAULT_K, MAX_K, MemoryRecord, Scalar

if TYPE_CHECKING:  # imported when a command runs: every `newfuse` start need not load them
    from newfuse.adapters.fleetmemory import FleetMemory
    from newfuse.adapters.redismemory import RedisMemory

memory_app = typer.Typer(
    help="A fleet's shared memory: add, search, forget, export, import.", no_args_is_help=True
)
app.add_typer(memory_app, name="memory")

REVISION: Final = "cli"  # the revision the CLI's writes carry; the fleet trusts its operator
IMPORT_BATCH: Final = 64
# newfuse.adapters.fleetmemory's DEFAULT_K and MAX_K (the tests hold them equal), not imported
# for Typer's defaults: that module loads onnxruntime.
_SHOWN_BAD: Final = 50  # bad import lines listed one by one; the rest are counted
_PROGRESS_FROM: Final = 1_000  # exports and imports smaller than this show no progress bar
T = TypeVar("T")

Pairs = list[str] | None
AsJson = Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")]


def scalar(text: str) -> Scalar:
    """A metadata value from the command line: a JSON number or boolean, else the text itself.

    Quote a value to keep it a string: `--meta 'n="3"'`.
    """
    try:
        value = json.loads(text)
    except ValueError:
        return text
    return value if isinstance(value, str | int | float | bool) else text


def pairs(given: Pairs, option: str) -> dict[str, Scalar]:
    """``k=v`` options as a dict; BadParameter naming ``option`` for one without `=`."""
    found: dict[str, Scalar] = {}
    for item in given or []:
        name, sep, value = item.partition("=")
        if not sep or not name:
            raise typer.BadParameter(f"expected key=value, got {item!r}", param_hint=option)
        found[name] = scalar(value)
    return found


def field_error(exc: ValidationError) -> str:
    """The first problem of ``exc`` as `field: message`."""
    first = exc.errors()[0]
    loc = first["loc"]
    if len(loc) == 3 and loc[0] == "metadata":  # one error per type of the union: say them all
        return f"metadata.{loc[1]}: a string, number or boolean is required"
    return f"{'.'.join(str(p) for p in loc) or 'line'}: {first['msg']}"


async def with_memory(
    url: str, namespace: str, fleet: str, body: Callable[[FleetMemory], Awaitable[T]]
) -> T:
    """Run ``body`` with the fleet's memory, written as the CLI's (trusted) revision."""
    from newfuse.adapters.fleetmemory import FleetMemory
    from newfuse.adapters.redismemory import RedisMemory

    async def on_redis(client: TaskClient) -> T:
        return await body(FleetMemory(RedisMemory(client.client, client.keys), REVISION))

    return await with_client(url, namespace, fleet, on_redis)


def _progress(disable: bool) -> Progress:
    columns = TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn()
    return Progress(*columns, TimeElapsedColumn(), console=errors, disable=disable)


@memory_app.command("add")
@run
async def add(
    fleet: Fleet,
    text: Annotated[str, typer.Argument(help="What to remember.")],
    meta: Annotated[Pairs, typer.Option("--meta", help="Metadata, key=value (repeatable).")] = None,
    memory_id: Annotated[
        str | None, typer.Option("--id", help="The memory's id (a retried add stores it once).")
    ] = None,
    ttl: Annotated[
        float | None, typer.Option("--ttl", min=0.001, help="Forget it after SECONDS.")
    ] = None,
    namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
) -> None:
    """Remember TEXT; prints its id."""
    metadata = pairs(meta, "--meta")

    async def body(memory: FleetMemory) -> None:
        try:
            found = await memory.remember(text, metadata, memory_id=memory_id, ttl_seconds=ttl)
        except ValidationError as exc:
            fail(f"invalid memory: {field_error(exc)}")
            raise typer.Exit(1) from None
        except MemoryFullError as exc:
            fail(str(exc))
            raise typer.Exit(1) from None
        print(found)

    await with_memory(redis_url, namespace, fleet, body)


@memory_app.command("search")
@run
async def search(
    fleet: Fleet,
    query: Annotated[str, typer.Argument(help="What to look for (by meaning, not words).")],
    k: Annotated[int, typer.Option("-k", min=1, max=MAX_K, help="How many.")] = DEFAULT_K,
    where: Annotated[
        Pairs, typer.Option("--where", help="Only memories whose metadata has key=value.")
    ] = None,
    as_json: AsJson = False,
    namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
) -> None:
    """The K memories nearest QUERY, best first."""
    wanted = pairs(where, "--where")

    async def body(memory: FleetMemory) -> None:
        found = await memory.recall(query, k, wanted or None)
        if as_json:
            print(json.dumps({"results": [r.to_json() for r in found]}))
            return
        table = Table(title=f"memories of {escape(namespace)}/{escape(fleet)} nearest the query")
        table.add_column("rank", justify="right")
        table.add_column("score", justify="right")
        for column in ("id", "revision", "text", "metadata"):
            table.add_column(column)
        for rank, hit in enumerate(found, 1):
            r = hit.record
            table.add_row(
                str(rank), f"{hit.score:.3f}", clip(r.id, 40), clip(r.revision, 20),
                clip(r.text, 60), clip(json.dumps(r.metadata), 60),
            )  # fmt: skip
        console.print(table)

    await with_memory(redis_url, namespace, fleet, body)


@memory_app.command("forget")
@run
async def forget(
    fleet: Fleet,
    ids: Annotated[list[str], typer.Argument(help="The memories' ids.")],
    namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
) -> None:
    """Forget memories by id (ids that do not exist are counted, not an error)."""

    async def body(memory: FleetMemory) -> None:
        gone = await memory.forget(*ids)
        missing = len(set(ids)) - gone
        console.print(f"forgot {gone} memory(ies)" + (f"; {missing} not found" if missing else ""))

    await with_memory(redis_url, namespace, fleet, body)


@contextmanager
def _opened(path: str, mode: str) -> Iterator[IO[str]]:
    """``path`` opened as text, `-` being stdin or stdout."""
    if path == "-":
        yield sys.stdout if "w" in mode else sys.stdin
        return
    with Path(path).open(mode, encoding="utf-8") as handle:
        yield handle


@memory_app.command("export")
@run
async def export(
    fleet: Fleet,
    target: Annotated[str, typer.Argument(help="JSONL file to write, or - for stdout.")] = "-",
    namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
) -> None:
    """Every memory all agents may see, as JSON lines (one MemoryRecord each)."""

    async def body(memory: FleetMemory) -> None:
        backend = cast("RedisMemory", memory.backend)
        total, written = await backend.size(), 0
        with _opened(target, "w") as out, _progress(total < _PROGRESS_FROM) as progress:
            bar = progress.add_task("exporting", total=total)
            async for record in backend.records():
                out.write(record.model_dump_json() + "\n")
                written += 1
                progress.advance(bar)
            out.flush()
        errors.print(f"exported {written} memory(ies) of {escape(namespace)}/{escape(fleet)}")

    await with_memory(redis_url, namespace, fleet, body)


@dataclass
class _Import:
    """What an import has done so far."""

    read: int = 0
    stored: int = 0
    expired: int = 0
    bad: list[tuple[int, str]] = field(default_factory=list)


def _lines(source: str) -> tuple[Iterator[tuple[int, str]], int | None]:
    """The numbered non-blank lines of ``source``, and how many there are (None: stdin)."""
    if source == "-":
        return ((n, line) for n, line in enumerate(sys.stdin, 1) if line.strip()), None
    path = Path(source)
    if not path.is_file():
        raise typer.BadParameter(f"no such file: {source}", param_hint="FILE")
    with path.open(encoding="utf-8") as handle:
        total = sum(1 for line in handle if line.strip())

    def numbered() -> Iterator[tuple[int, str]]:
        with path.open(encoding="utf-8") as handle:
            yield from ((n, line) for n, line in enumerate(handle, 1) if line.strip())

    return numbered(), total


async def _store(memory: FleetMemory, batch: list[MemoryRecord], done: _Import) -> None:
    now_ms = await memory.backend.now_ms()
    kept = [r for r in batch if r.expires_ms is None or r.expires_ms > now_ms]
    done.expired += len(batch) - len(kept)
    try:
        done.stored += await memory.restore(kept)
    except MemoryFullError as exc:
        fail(f"{exc} (imported {done.stored} before the limit)")
        raise typer.Exit(1) from None


async def _import_lines(
    memory: FleetMemory, lines: Iterator[tuple[int, str]], progress: Progress, bar: Any
) -> _Import:
    done, batch = _Import(), []
    for number, line in lines:
        done.read += 1
        progress.advance(bar)
        try:
            batch.append(MemoryRecord.model_validate_json(line))
        except ValidationError as exc:
            done.bad.append((number, field_error(exc)))
            continue
        if len(batch) >= IMPORT_BATCH:
            await _store(memory, batch, done)
            batch = []
    if batch:
        await _store(memory, batch, done)
    return done


def _report(done: _Import, namespace: str, fleet: str) -> None:
    for number, problem in done.bad[:_SHOWN_BAD]:
        errors.print(f"[red]bad line[/] {number}: {escape(problem)}")
    if len(done.bad) > _SHOWN_BAD:
        errors.print(f"... and {len(done.bad) - _SHOWN_BAD} more bad line(s)")
    valid = done.read - len(done.bad)
    console.print(
        f"imported {done.stored} new memory(ies) of {valid} valid into "
        f"{escape(namespace)}/{escape(fleet)}"
        + (f"; {done.expired} already expired, skipped" if done.expired else "")
        + (f"; {len(done.bad)} bad line(s) skipped" if done.bad else "")
    )


@memory_app.command("import")
@run
async def import_(
    fleet: Fleet,
    source: Annotated[str, typer.Argument(help="JSONL file (from `export`), or - for stdin.")],
    namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
) -> None:
    """Import exported memories, re-embedded (exit 1 if any line was bad; the good ones stay)."""
    lines, total = _lines(source)

    async def body(memory: FleetMemory) -> _Import:
        small = total is not None and total < _PROGRESS_FROM
        with _progress(small) as progress:
            bar = progress.add_task("importing", total=total)
            return await _import_lines(memory, lines, progress, bar)

    done = await with_memory(redis_url, namespace, fleet, body)
    _report(done, namespace, fleet)
    if done.bad:
        raise typer.Exit(1)


async def _status(memory: FleetMemory) -> dict[str, Any]:
    backend = cast("RedisMemory", memory.backend)
    keys, client = backend.keys, backend.client
    size, model = await backend.size(), await backend.active_model()
    target = cast(str | None, await client.get(keys.memory_next_model))
    embedded = int(await client.hlen(keys.memory_next_vectors)) if target else 0
    held = cast(dict[str, str], await client.hgetall(keys.memory_quarantine))
    quarantined: dict[str, int] = {}
    for revision in held.values():
        quarantined[revision] = quarantined.get(revision, 0) + 1
    return {
        "size": size,
        "activeModel": model,
        "reembedding": None if target is None else {"model": target, "done": embedded},
        "quarantined": quarantined,
    }


@memory_app.command("status")
@run
async def status(
    fleet: Fleet,
    as_json: AsJson = False,
    namespace: Namespace = DEFAULT_NAMESPACE,
    redis_url: RedisUrl = DEFAULT_REDIS,
) -> None:
    """How many memories, under which model, any re-embedding under way, what is quarantined."""
    found = await with_memory(redis_url, namespace, fleet, _status)
    if as_json:
        print(json.dumps(found))
        return
    table = Table(title=f"memory of {escape(namespace)}/{escape(fleet)}", show_header=False)
    table.add_column("what")
    table.add_column("value")
    table.add_row("memories", str(found["size"]))
    table.add_row("active model", clip(found["activeModel"] or "- (none stored yet)", 80))
    if (moving := found["reembedding"]) is not None:
        share = f"{moving['done']}/{found['size']}"
        table.add_row("re-embedding to", f"{clip(moving['model'], 80)} ({share})")
    for revision, count in sorted(found["quarantined"].items()):
        table.add_row(f"quarantined ({clip(revision, 40)})", str(count))
    console.print(table)
