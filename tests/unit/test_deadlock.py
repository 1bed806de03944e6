"""Deadlock detection, table-tested: cycles in the wait-for graph, the victim every node agrees
on; the operator's totals and its Event for broken deadlocks."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from factories import fleet
from newfuse.api.status import FleetMetrics, NewFuseAgentStatus, Reason
from newfuse.core import deadlock
from newfuse.core.deadlock import Edge
from newfuse.core.metrics import TaskCounters, settle_totals
from newfuse.runtime.effects import announce_deadlocks


def edges(*chain: tuple[str, str, float]) -> dict[str, Edge]:
    """Edges from (waiter, children separated by commas, since)."""
    return {waiter: Edge(waiter, tuple(kids.split(",")), since) for waiter, kids, since in chain}


CASES: dict[str, tuple[dict[str, Edge], str, list[str] | None]] = {
    "not waiting": (edges(), "a", None),
    "a chain that ends": (edges(("a", "b", 1), ("b", "c", 2)), "a", None),
    "two tasks": (edges(("a", "b", 1), ("b", "a", 2)), "a", ["a", "b"]),
    "two tasks, from the other": (edges(("a", "b", 1), ("b", "a", 2)), "b", ["b", "a"]),
    "three fleets": (edges(("a", "b", 1), ("b", "c", 2), ("c", "a", 3)), "b", ["b", "c", "a"]),
    "waits on a cycle it is not in": (
        edges(("x", "a", 9), ("a", "b", 1), ("b", "a", 2)),
        "x",
        None,
    ),
    "waits on itself": (edges(("a", "a", 1)), "a", ["a"]),
    "a fan-out, one branch loops back": (
        edges(("a", "b,c", 1), ("b", "d", 2), ("c", "a", 3)),
        "a",
        ["a", "c"],
    ),
    "a fan-in, no cycle": (edges(("a", "b,c", 1), ("b", "d", 2), ("c", "d", 3)), "a", None),
}


@pytest.mark.parametrize(("graph", "start", "cycle"), CASES.values(), ids=CASES.keys())
def test_cycle_from(graph: dict[str, Edge], start: str, cycle: list[str] | None) -> None:
    found = deadlock.cycle_from(start, graph)
    assert (None if found is None else [e.waiter for e in found]) == cycle


def test_every_node_of_a_cycle_picks_the_same_victim_the_youngest_wait() -> None:
    graph = edges(("a", "b", 5), ("b", "c", 9), ("c", "a", 7))
    victims = {deadlock.victim(deadlock.cycle_from(n, graph) or []).waiter for n in "abc"}
    assert victims == {"b"}
    tied = edges(("a", "b", 5), ("b", "a", 5))
    assert {deadlock.victim(deadlock.cycle_from(n, tied) or []).waiter for n in "ab"} == {"b"}
    # A hop within one millisecond is still ordered, by its microseconds.
    fast = edges(("b", "a", 5.250), ("a", "b", 5.251))
    assert {deadlock.victim(deadlock.cycle_from(n, fast) or []).waiter for n in "ab"} == {"a"}


def test_a_cycle_is_described_as_a_loop() -> None:
    cycle = deadlock.cycle_from("a", edges(("a", "b", 1), ("b", "a", 2)))
    assert cycle is not None
    assert deadlock.describe(cycle) == "a -> b -> a"


def test_broken_deadlocks_never_decrease_in_status() -> None:
    folded = FleetMetrics()
    assert settle_totals(folded, TaskCounters(deadlocks=2), None).deadlocks_broken == 2
    previous = FleetMetrics(deadlocks_broken=5)
    assert settle_totals(folded, TaskCounters(deadlocks=2), previous).deadlocks_broken == 5


class Kube:
    def __init__(self) -> None:
        self.events: list[tuple[Any, ...]] = []

    async def post_event(self, *args: Any) -> None:
        self.events.append(args)


@pytest.mark.parametrize(
    ("before", "after", "posted"), [(0, 0, 0), (0, 1, 1), (3, 3, 0), (1, 4, 1)]
)
def test_an_event_says_when_deadlocks_were_broken(before: int, after: int, posted: int) -> None:
    nfa = fleet()
    nfa = nfa.model_copy(
        update={"status": NewFuseAgentStatus(metrics=FleetMetrics(deadlocks_broken=before))}
    )
    status = NewFuseAgentStatus(metrics=FleetMetrics(deadlocks_broken=after))
    kube = Kube()
    asyncio.run(announce_deadlocks(kube, nfa, status, dt.datetime.now(dt.UTC)))  # type: ignore[arg-type]
    assert len(kube.events) == posted
    if posted:
        assert kube.events[0][4] == Reason.DEADLOCK_BROKEN
        assert f"{after - before} cycle(s)" in kube.events[0][5]
