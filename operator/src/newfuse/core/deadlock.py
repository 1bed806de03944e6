"""Deadlock detection in the wait-for graph of delegations: find a cycle, pick its victim.

A waiting task has edges to the tasks it waits on (newfuse.wire.delegation); one that fans out
waits on several. A path of edges that comes back to where it began is a cycle, which no task in
it can ever leave. Every agent of every fleet in the cycle may find it, so the victim must be the
same whoever looks: the youngest waiter (the wait that began last, ties broken by name), whose
wait closed the cycle. Failing it unblocks the others.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass


@dataclass(frozen=True)
class Edge:
    """``waiter`` waits on ``children`` since ``since_ms`` (Redis ms). Nodes are TaskRef strings.

    A wait begins before its children are submitted, so a child's wait is always younger than
    its parent's; the fraction (µs) keeps a fast hop from tying with the one before it.
    """

    waiter: str
    children: tuple[str, ...]
    since_ms: float


def cycle_from(start: str, edges: Mapping[str, Edge]) -> list[Edge] | None:
    """A cycle through ``start``, its edges in wait order from ``start``; None if it is on none.

    Depth first, children in order, so the same graph gives the same cycle. A task that waits on
    a cycle it is not part of is not on it: the agents of that cycle's fleets find it from its
    own nodes.
    """
    path: list[Edge] = []
    done: set[str] = set()

    def walk(node: str) -> bool:
        edge = edges.get(node)
        if edge is None or node in done:
            return False
        done.add(node)
        path.append(edge)
        for child in edge.children:
            if child == start or walk(child):
                return True
        path.pop()
        return False

    return path if walk(start) else None


def victim(cycle: list[Edge]) -> Edge:
    """The youngest wait of the cycle: the same choice from every node."""
    return max(cycle, key=lambda e: (e.since_ms, e.waiter))


def describe(cycle: list[Edge]) -> str:
    """The cycle as one line: a -> b -> a."""
    return " -> ".join([*(e.waiter for e in cycle), cycle[0].waiter])
