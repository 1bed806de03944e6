"""The live feed's pure part (what changed between two looks) and its bounded fan-out."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any, cast

import pytest

from newfuse.adapters.taskclient import TaskClient
from newfuse.api.rollout import RolloutPhase, RolloutState
from newfuse.api.v1alpha1 import NewFuseAgentStatus, Phase
from newfuse.core.metrics import fleet_summary
from newfuse.fleetapi.feed import QUEUE_SIZE, Feed, SlowConsumerError, Watcher
from newfuse.fleetapi.live import (
    OUTPUT_PREVIEW,
    Snapshot,
    agent_view,
    changes,
    fleet_view,
    result_event,
    snapshot_event,
)
from newfuse.wire.state import AgentState, AgentStatus, StateUpdate
from newfuse.wire.tasks import ResultPayload, ResultStatus

pytestmark = pytest.mark.unit
AT = dt.datetime(2026, 12, 2, 1, 0, tzinfo=dt.UTC)


def _agent(agent_id: str, version: int = 1, status: AgentStatus = AgentStatus.ACTIVE) -> Any:
    update = StateUpdate(
        agent_id=agent_id,
        state=AgentState(id=agent_id, status=status, capabilities=["echo"], revision="r1"),
        version=version,
        timestamp=AT + dt.timedelta(seconds=version),
    )
    return agent_view(update)


def _snap(*agents: dict[str, Any], phase: str = "Available", done: int = 0) -> Snapshot:
    fleet = {"phase": phase, "counters": {"tasksCompleted": done}}
    return Snapshot(fleet, {a["id"]: a for a in agents})


@pytest.mark.parametrize(
    ("before", "after", "expected"),
    [
        (_snap(_agent("a")), _snap(_agent("a")), []),
        (_snap(_agent("a")), _snap(_agent("a", 2)), [("agent", "a")]),
        (_snap(_agent("a")), _snap(_agent("a"), _agent("b")), [("agent", "b")]),
        (_snap(_agent("a"), _agent("b")), _snap(_agent("b")), [("agent-gone", "a")]),
        (_snap(), _snap(phase="Progressing"), [("fleet", None)]),
        (_snap(), _snap(done=3), [("fleet", None)]),
        (
            _snap(_agent("b"), _agent("c")),
            _snap(_agent("a"), _agent("c", 2), done=1),
            [("fleet", None), ("agent", "a"), ("agent", "c"), ("agent-gone", "b")],
        ),
        (_snap(_agent("a")), _snap(_agent("a", 1, AgentStatus.INACTIVE)), [("agent", "a")]),
    ],
    ids=["same", "heartbeat", "new", "gone", "phase", "counters", "all", "status"],
)
def test_changes_are_what_turns_one_look_into_the_next(
    before: Snapshot, after: Snapshot, expected: list[tuple[str, str | None]]
) -> None:
    events = changes(before, after, AT)
    found = [(e["type"], e.get("agent", {}).get("id", e.get("id"))) for e in events]
    assert found == expected
    assert all(e["at"] == AT.isoformat() for e in events)


def test_a_snapshot_lists_agents_by_id() -> None:
    event = snapshot_event(_snap(_agent("b"), _agent("a")), AT)
    assert [a["id"] for a in event["agents"]] == ["a", "b"]
    assert event["agents"][0]["heartbeat"] == (AT + dt.timedelta(seconds=1)).isoformat()


def test_the_fleet_view_carries_phase_rollout_and_counters() -> None:
    rollout = RolloutState(
        phase=RolloutPhase.PROGRESSING,
        stable_revision="old",
        canary_revision="new",
        step=2,
        step_started_at=AT,
    )
    status = NewFuseAgentStatus(
        phase=Phase.PROGRESSING, replicas=4, ready_replicas=3, rollout=rollout
    )
    view = fleet_view(fleet_summary(status, "1.0"), {"tasksFailed": 1, "tasksCompleted": 9})
    assert view["protocolVersion"] == "1.0"
    assert view["phase"] == "Progressing"
    assert (view["replicas"], view["readyReplicas"]) == (4, 3)
    assert view["rollout"]["canaryRevision"] == "new"
    assert view["rollout"]["step"] == 2
    assert list(view["counters"]) == ["tasksCompleted", "tasksFailed"]
    assert fleet_view(None, {}) == {"counters": {}, "reviewsPending": 0}
    assert fleet_view(None, {}, 3)["reviewsPending"] == 3


def test_a_result_event_cuts_a_big_output() -> None:
    result = ResultPayload(
        task_id="t1",
        status=ResultStatus.SUCCEEDED,
        output={"text": "x" * 10_000},
        agent_id="a",
        finished_at=AT,
    )
    event = result_event(result, AT)
    assert (event["taskId"], event["status"], event["agentId"]) == ("t1", "succeeded", "a")
    assert len(event["output"]) == OUTPUT_PREVIEW
    small = result_event(result.model_copy(update={"output": {"n": 1}}), AT)
    assert small["output"] == {"n": 1}


def test_a_watcher_that_falls_a_queue_behind_is_cut_and_its_queue_freed() -> None:
    feed = Feed(cast(TaskClient, object()))
    slow, fast, blind = Watcher(results=True), Watcher(results=True), Watcher(results=False)
    cut: list[Watcher] = []
    slow.on_cut = lambda: cut.append(slow)
    feed._watchers.update({slow, fast, blind})
    for n in range(QUEUE_SIZE):
        feed.broadcast({"type": "result", "n": n}, results_only=True)
        if n == QUEUE_SIZE // 2:
            while not fast.queue.empty():
                fast.queue.get_nowait()
    assert blind.queue.empty(), "results go only to watchers that may read them"
    assert not cut
    feed.broadcast({"type": "agent"})
    assert cut == [slow]
    assert slow.queue.empty()
    assert slow not in feed._watchers
    assert fast in feed._watchers
    assert blind.queue.qsize() == 1
    with pytest.raises(SlowConsumerError):
        asyncio.run(slow.next())
