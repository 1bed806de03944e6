"""What the live feed says about a fleet, and what changed between two looks (pure).

The feed reads a fleet's Redis state on a short period and sends each watcher the differences:
the fleet's status (phase, pods, rollout, task counters) and each agent's latest heartbeat. A
watcher first gets a `snapshot` of everything, then only changes, so a page never reloads the
fleet to stay current; results arrive as `result` events from the result stream.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Any, Final

from newfuse.wire.state import FleetSummary, StateUpdate
from newfuse.wire.tasks import ResultPayload

SNAPSHOT: Final = "snapshot"
FLEET: Final = "fleet"
AGENT: Final = "agent"
AGENT_GONE: Final = "agent-gone"
RESULT: Final = "result"
# Bound on what a result event carries of a task's output: the feed is a view, not a transport.
OUTPUT_PREVIEW: Final = 2000


@dataclass(frozen=True)
class Snapshot:
    """One look at a fleet: its status view and each agent's view, by agent id."""

    fleet: dict[str, Any] = field(default_factory=dict)
    agents: dict[str, dict[str, Any]] = field(default_factory=dict)


def _iso(when: dt.datetime | None) -> str | None:
    return None if when is None else when.isoformat()


def agent_view(update: StateUpdate) -> dict[str, Any]:
    """One agent as the feed shows it; `heartbeat` is when it last wrote its state."""
    state, metrics = update.state, update.state.metrics
    return {
        "id": update.agent_id,
        "status": state.status.value,
        "revision": state.revision,
        "capabilities": list(state.capabilities),
        "heartbeat": _iso(update.timestamp),
        "version": update.version,
        "requestsHandled": metrics.requests_handled,
        "tasksCompleted": metrics.tasks_completed,
        "tasksFailed": metrics.tasks_failed,
        "latencyP95Ms": metrics.latency_p95_ms,
    }


def fleet_view(
    summary: FleetSummary | None, counters: dict[str, int], reviews_pending: int = 0
) -> dict[str, Any]:
    """The fleet's status as the operator mirrored it, with its task counters as of now.

    `reviewsPending`: tasks waiting for a person (its review queue's depth).
    """
    view: dict[str, Any] = summary.model_dump(mode="json", by_alias=True) if summary else {}
    view["counters"] = dict(sorted(counters.items()))
    view["reviewsPending"] = reviews_pending
    return view


def snapshot_event(snapshot: Snapshot, at: dt.datetime) -> dict[str, Any]:
    """The first event a watcher gets: the whole fleet."""
    agents = [snapshot.agents[a] for a in sorted(snapshot.agents)]
    return {"type": SNAPSHOT, "at": _iso(at), "fleet": snapshot.fleet, "agents": agents}


def changes(before: Snapshot, after: Snapshot, at: dt.datetime) -> list[dict[str, Any]]:
    """The events that turn ``before`` into ``after``: fleet first, then agents by id."""
    out: list[dict[str, Any]] = []
    stamp = _iso(at)
    if after.fleet != before.fleet:
        out.append({"type": FLEET, "at": stamp, "fleet": after.fleet})
    for agent_id in sorted(after.agents):
        if before.agents.get(agent_id) != after.agents[agent_id]:
            out.append({"type": AGENT, "at": stamp, "agent": after.agents[agent_id]})
    out.extend(
        {"type": AGENT_GONE, "at": stamp, "id": agent_id}
        for agent_id in sorted(before.agents.keys() - after.agents.keys())
    )
    return out


def result_event(result: ResultPayload, at: dt.datetime) -> dict[str, Any]:
    """A task's result, its output cut to OUTPUT_PREVIEW characters of JSON."""
    output = result.model_dump(mode="json", include={"output"}).get("output")
    preview = output if len(repr(output)) <= OUTPUT_PREVIEW else repr(output)[:OUTPUT_PREVIEW]
    return {
        "type": RESULT,
        "at": _iso(at),
        "taskId": result.task_id,
        "status": result.status.value,
        "agentId": result.agent_id,
        "latencyMs": result.latency_ms,
        "finishedAt": _iso(result.finished_at),
        "output": preview,
        "error": result.error,
    }
