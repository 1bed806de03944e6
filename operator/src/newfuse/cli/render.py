"""How results, attempt histories and dead letters look in a terminal.

Everything shown here was read from Redis, which anybody who reaches it can write: every value is
escaped (a task id like `[/]` must not be taken as rich markup and end the command) and cut to a
readable length (a megabyte-long error must not flood the screen).
"""

from __future__ import annotations

import datetime as dt
import json
import re
from typing import Any

from rich.console import Group, RenderableType
from rich.table import Table
from rich.text import Text

from newfuse.adapters.streamread import letter_task
from newfuse.wire.tasks import AttemptRecord, DeadLetter, ResultPayload, ResultStatus

_BRACKET = re.compile(r"(\\*)\[")


def clip(value: Any, limit: int = 100) -> str:
    """``value`` as one escaped line of at most ``limit`` characters."""
    text = " ".join(str(value).split())
    if len(text) > limit:
        text = text[: limit - 1] + "…"
    # Every "[", not only those rich's escape() sees as a tag: pieces are joined afterwards, and
    # a "[/" in one value and a "]" in the next would make a tag. Backslashes before a "[" (or
    # at the end, before whatever markup follows) are doubled so they cannot undo the escape.
    text = _BRACKET.sub(lambda m: m.group(1) * 2 + "\\[", text)
    return text + "\\" if text.endswith("\\") else text


def age(at: dt.datetime | None) -> str:
    """How long ago, briefly (42s, 7m)."""
    if at is None:
        return "-"
    if at.utcoffset() is None:
        at = at.replace(tzinfo=dt.UTC)
    seconds = (dt.datetime.now(dt.UTC) - at).total_seconds()
    return f"{seconds:.0f}s" if seconds < 120 else f"{seconds / 60:.0f}m"


def when(at: dt.datetime | None) -> str:
    """An instant as UTC, to the second."""
    if at is None:
        return "-"
    if at.utcoffset() is None:
        at = at.replace(tzinfo=dt.UTC)
    return at.astimezone(dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")


def output_of(result: ResultPayload) -> str:
    """The output of a success, the error of a failure."""
    if result.output is not None:
        return json.dumps(result.output, default=str)
    return result.error or ""


def result_line(result: ResultPayload) -> str:
    """One markup line per result, for `newfuse task watch`."""
    colour = "green" if result.status is ResultStatus.SUCCEEDED else "red"
    reason = f" ({clip(result.reason, 40)})" if result.reason else ""
    return (
        f"[{colour}]{result.status.value:<9}[/]{reason} {clip(result.task_id, 64)}  by "
        f"{clip(result.agent_id, 64)} in {result.latency_ms:.1f} ms, attempt "
        f"{result.attempts}  {clip(output_of(result))}"
    )


def history_table(history: list[AttemptRecord], title: str = "attempts before") -> Table:
    """A task's failed attempts, oldest first."""
    table = Table(title=title, title_justify="left")
    for column in ("attempt", "ended at", "agent", "error", "retry in"):
        table.add_column(column, justify="right" if column in ("attempt", "retry in") else "left")
    for record in history:
        retry = record.retry_in_seconds
        table.add_row(
            str(record.attempt),
            when(record.at),
            clip(record.agent_id, 40),
            clip(record.error, 80),
            "-" if retry is None else f"{retry:.1f}s",
        )
    return table


def result_view(result: ResultPayload) -> RenderableType:
    """A result as `newfuse task get/wait` shows it: status, reason, output or error, history."""
    colour = "green" if result.status is ResultStatus.SUCCEEDED else "red"
    lines = [
        f"task      {clip(result.task_id, 128)}",
        f"status    [{colour}]{result.status.value}[/]",
        f"reason    {clip(result.reason, 80) if result.reason else '-'}",
        f"attempts  {result.attempts}",
        f"agent     {clip(result.agent_id, 80)} (revision {clip(result.revision or '-', 40)})",
        f"finished  {when(result.finished_at)}, after {result.latency_ms:.1f} ms",
    ]
    if result.output is not None:
        lines.append(f"output    {clip(output_of(result), 2000)}")
    if result.error:
        lines.append(f"error     {clip(result.error, 2000)}")
    parts: list[RenderableType] = [Text.from_markup("\n".join(lines))]
    if result.history:
        parts.append(history_table(result.history))
    return Group(*parts)


def _history_cell(letter: DeadLetter) -> str:
    task = letter_task(letter)
    if task is None or not task.history:
        return "-"
    return "\n".join(
        f"#{r.attempt} {when(r.at)[11:]} {clip(r.agent_id, 24)}: {clip(r.error, 48)}"
        for r in task.history
    )


def dead_letter_table(title: str, letters: list[tuple[str, DeadLetter]]) -> Table:
    """Dead letters with reason, attempts, times and, when the task holds one, its history."""
    table = Table(title=title)
    for column in ("id", "reason", "task", "attempts", "agent", "at (UTC)", "age", "detail"):
        table.add_column(column, justify="right" if column == "attempts" else "left")
    table.add_column("attempt history (UTC)")
    for entry_id, letter in letters:
        table.add_row(
            clip(entry_id, 40),
            clip(letter.reason, 40),
            clip(letter.task_id or "-", 40),
            str(letter.attempts),
            clip(letter.agent_id, 40),
            when(letter.at),
            age(letter.at),
            clip(letter.detail, 80),
            _history_cell(letter),
        )
    return table
