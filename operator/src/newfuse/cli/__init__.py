"""`newfuse`: submit tasks, follow results, inspect agents and dead letters, steer rollouts.

Task commands talk to the fleet's Redis directly (the same keys the agents use), so they work
wherever the Redis URL reaches: NEWFUSE_REDIS_URL or --redis-url. Rollout commands talk to the
Kubernetes API. Errors are one readable line and a non-zero exit.

One module per command group (tasks, fleet, flows, reviews, golden, rollout, memory, and memorypg
adding `memory provision-pg`); importing them registers their commands on `app`, the Typer app
they share with `common`.
"""

from __future__ import annotations

import os

from newfuse.cli import fleet, flows, golden, memory, memorypg, reviews, rollout, tasks
from newfuse.cli.common import app, errors
from newfuse.tracing import TraceExporter, configure_tracing

__all__ = [
    "app",
    "fleet",
    "flows",
    "golden",
    "main",
    "memory",
    "memorypg",
    "reviews",
    "rollout",
    "tasks",
]


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
