"""Deadlock detection in the wait-for graph of delegations: find a cycle, pick its victim.

A waiting task has one edge, to the task it waits on (newfuse.wire.delegation). Following edges
from a waiting task either ends (at a task that is not waiting) or comes back to a task already
seen: a cycle, which no task in it can ever leave. Every agent of every fleet in the cycle may find
it, so the victim must be the same whoever looks: the youngest waiter (the wait that began last,
ties broken by name), whose wait closed the cycle. Failing it unblocks the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Edge:
    """``waiter`` waits on ``child`` since ``since_ms`` (Redis ms). Nodes are TaskRef strings."""

    waiter: str
    child: str
    since_ms: int


def cycle_from(start: str, edges: Mapping[str, Edge]) -> list[Edge] | None:
    """The cycle ``start`` is on, its edges in wait order from ``start``; None if it is on none.

    A walk that loops without coming back to ``start`` (start waits on a cycle it is not part of)
    is not its cycle: the agents of that cycle's fleets find it from its own nodes.
    """
    path: list[Edge] = []
    node, seen = start, set()
    while node in edges and node not in seen:
        seen.add(node)
        edge = edges[node]
        path.append(edge)
        node = edge.child
        if node == start:
            return path
    return None


def victim(cycle: list[Edge]) -> Edge:
    """The youngest wait of the cycle: the same choice from every node."""
    return max(cycle, key=lambda e: (e.since_ms, e.waiter))


def describe(cycle: list[Edge]) -> str:
    """The cycle as one line: a -> b -> a."""
    return " -> ".join([*(e.waiter for e in cycle), cycle[0].waiter])
