"""Every named transition of `decide`, one row each: what it starts from and where it lands.

The rows follow the order in which `decide` tries them (newfuse.core.rollout). A row names the
transition it exercises; test_rollout_decide.py has the longer stories that chain them.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from dataclasses import dataclass, field

import pytest

import newfuse.core.rollout as rollout_module
from newfuse.api.rollout import (
    GateSpec,
    GradualStage,
    HistoryEntry,
    InitialStage,
    PhasedPolicy,
    RolloutPhase,
    RolloutReason,
    RolloutState,
    Stage,
)
from newfuse.core.actions import Controls
from newfuse.core.gates import RevisionStats
from newfuse.core.rollout import Decision, Observation, decide

T0 = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
POLICY = PhasedPolicy(
    initial=InitialStage(soak_seconds=60, gate=GateSpec(min_tasks=10)),
    gradual=GradualStage(step=1, interval_seconds=30, gate=GateSpec(min_tasks=10)),
    progress_deadline_seconds=300,
)
CAPS = {"old": frozenset({"chat"}), "new": frozenset({"chat"})}
GOOD = {"new": RevisionStats(completed=50), "old": RevisionStats(completed=500, failed=5)}
BAD = {"new": RevisionStats(completed=30, failed=20), "old": RevisionStats(completed=500)}
FEW = {"new": RevisionStats(completed=3)}
R = RolloutReason


def rollout(phase: RolloutPhase = RolloutPhase.PROGRESSING, **kw: object) -> RolloutState:
    """A rollout from "old" to "new" that started at T0, in stage 1 with one canary agent."""
    values: dict[str, object] = {
        "phase": phase,
        "stable_revision": "old",
        "canary_revision": "new",
        "canary_agents": 1,
        "step_started_at": T0,
    }
    values.update(kw)
    return RolloutState.model_validate(values)


@dataclass(frozen=True)
class Row:
    """One transition: the state and what was seen, then the phase and history it leads to."""

    transition: str
    state: RolloutState | None
    expect_phase: RolloutPhase | None
    expect_reasons: list[RolloutReason]
    expect_desired: dict[str, int]
    seconds: float = 0
    update: str = "new"
    ready: dict[str, int] = field(default_factory=lambda: {"old": 6})
    stats: dict[str, RevisionStats] = field(default_factory=dict)
    controls: Controls = field(default_factory=Controls)
    policy: dict[str, object] = field(default_factory=dict)
    replicas: int = 6
    # (stage, step, canary agents) after the transition, and its message, where a row says.
    expect_step: tuple[Stage, int, int] | None = None
    expect_message: str | None = None


CANARY_READY = {"old": 5, "new": 1}
ROWS = [
    Row("_idle: nothing to roll out", None, None, [], {"old": 6}, update="old"),
    Row("_idle: a new revision starts stage 1", None, RolloutPhase.PROGRESSING, [R.STARTED],
        {"old": 6, "new": 1}),
    Row("_idle: a failed revision waits for retry", rollout(RolloutPhase.ROLLED_BACK),
        RolloutPhase.ROLLED_BACK, [], {"old": 6}),
    Row("_idle: retry starts it again", rollout(RolloutPhase.ABORTED), RolloutPhase.PROGRESSING,
        [R.RETRIED], {"old": 6, "new": 1}, controls=Controls(retry=True)),
    Row("_idle: after completion, the next revision starts from the completed one",
        rollout(RolloutPhase.COMPLETED), RolloutPhase.PROGRESSING, [R.STARTED],
        {"new": 6, "newer": 1}, update="newer", ready={"new": 6}),
    Row("_spec_changed: back to stable ends the rollout", rollout(), RolloutPhase.ROLLED_BACK,
        [R.REVERTED], {"old": 6}, update="old"),
    Row("_spec_changed: another revision restarts stage 1", rollout(), RolloutPhase.PROGRESSING,
        [R.RESTARTED], {"old": 6, "newer": 1}, update="newer"),
    Row("abort", rollout(), RolloutPhase.ABORTED, [R.ABORTED], {"old": 6},
        controls=Controls(abort=True)),
    Row("_pause", rollout(), RolloutPhase.PAUSED, [R.PAUSED], {"old": 5, "new": 1},
        ready=CANARY_READY, policy={"paused": True}),
    Row("_resume: the soak goes on where it stopped",
        rollout(RolloutPhase.PAUSED, paused_at=T0 + dt.timedelta(seconds=30)),
        RolloutPhase.ANALYZING, [R.RESUMED], {"old": 5, "new": 1}, seconds=90,
        ready=CANARY_READY, stats=GOOD),
    Row("promote-full", rollout(), RolloutPhase.PROMOTING, [R.PROMOTED_FULL],
        {"old": 5, "new": 2}, ready=CANARY_READY, controls=Controls(promote_full=True),
        expect_step=(Stage.FULL, 1, 6)),
    Row("promote-full from stage 2", rollout(stage=Stage.GRADUAL, step=2, canary_agents=3),
        RolloutPhase.PROMOTING, [R.PROMOTED_FULL], {"old": 3, "new": 4},
        ready={"old": 3, "new": 3}, controls=Controls(promote_full=True),
        expect_step=(Stage.FULL, 3, 6)),
    Row("_canaries_not_ready: wait", rollout(), RolloutPhase.PROGRESSING, [],
        {"old": 6, "new": 1}, seconds=10),
    Row("_canaries_not_ready: past the deadline, roll back", rollout(), RolloutPhase.ROLLED_BACK,
        [R.DEADLINE_EXCEEDED], {"old": 6}, seconds=301,
        expect_message="only 0/1 canary agents Ready after 301s"),
    Row("_canaries_not_ready: at the deadline exactly, still waiting",
        rollout(RolloutPhase.ANALYZING), RolloutPhase.PROGRESSING, [], {"old": 6, "new": 1},
        seconds=300),
    Row("_canaries_not_ready: a Degraded rollout stays Degraded while it waits",
        rollout(RolloutPhase.DEGRADED), RolloutPhase.DEGRADED, [], {"old": 6, "new": 1},
        seconds=10),
    Row("_canaries_not_ready: past the deadline, no auto rollback", rollout(),
        RolloutPhase.DEGRADED, [R.DEADLINE_EXCEEDED], {"old": 6, "new": 1}, seconds=301,
        policy={"auto_rollback": False}),
    Row("promote", rollout(), RolloutPhase.PROMOTING, [R.PROMOTED], {"old": 5, "new": 2},
        ready=CANARY_READY, controls=Controls(promote=True)),
    Row("promote in stage 3 completes", rollout(stage=Stage.FULL, canary_agents=6),
        RolloutPhase.COMPLETED, [R.COMPLETED], {"new": 6}, ready={"new": 6},
        controls=Controls(promote=True)),
    Row("_judge: soaking", rollout(), RolloutPhase.ANALYZING, [], {"old": 5, "new": 1},
        seconds=30, ready=CANARY_READY, stats=GOOD),
    Row("_judge: stage 3 soaked, complete", rollout(stage=Stage.FULL, canary_agents=6),
        RolloutPhase.COMPLETED, [R.COMPLETED], {"new": 6}, ready={"new": 6}),
    Row("_judge: the gate passes, next step", rollout(), RolloutPhase.PROMOTING,
        [R.GATE_PASSED, R.STEP_STARTED], {"old": 5, "new": 2}, seconds=61, ready=CANARY_READY,
        stats=GOOD, expect_step=(Stage.GRADUAL, 1, 2)),
    Row("_judge: soaked exactly, judged", rollout(), RolloutPhase.PROMOTING,
        [R.GATE_PASSED, R.STEP_STARTED], {"old": 5, "new": 2}, seconds=60, ready=CANARY_READY,
        stats=GOOD),
    Row("_judge: stage 1 passes with every agent moved: straight to stage 3", rollout(),
        RolloutPhase.PROMOTING, [R.GATE_PASSED, R.STEP_STARTED], {"old": 1, "new": 2},
        seconds=61, ready={"old": 1, "new": 1}, stats=GOOD, replicas=2,
        expect_step=(Stage.FULL, 1, 2)),
    Row("_judge: stage 2 passes, the next step", rollout(stage=Stage.GRADUAL, step=1,
        canary_agents=2), RolloutPhase.PROMOTING, [R.GATE_PASSED, R.STEP_STARTED],
        {"old": 4, "new": 3}, seconds=31, ready={"old": 4, "new": 2}, stats=GOOD,
        expect_step=(Stage.GRADUAL, 2, 3)),
    Row("_judge: stage 2's last step passes: stage 3", rollout(stage=Stage.GRADUAL, step=4,
        canary_agents=5), RolloutPhase.PROMOTING, [R.GATE_PASSED, R.STEP_STARTED],
        {"old": 1, "new": 6}, seconds=31, ready={"old": 1, "new": 5}, stats=GOOD,
        expect_step=(Stage.FULL, 5, 6)),
    Row("_inconclusive: too few tasks", rollout(), RolloutPhase.ANALYZING, [],
        {"old": 5, "new": 1}, seconds=61, ready=CANARY_READY, stats=FEW),
    Row("_inconclusive: at the deadline exactly", rollout(), RolloutPhase.ANALYZING, [],
        {"old": 5, "new": 1}, seconds=300, ready=CANARY_READY, stats=FEW),
    Row("_inconclusive: past the deadline", rollout(), RolloutPhase.DEGRADED,
        [R.DEADLINE_EXCEEDED], {"old": 5, "new": 1}, seconds=301, ready=CANARY_READY,
        stats=FEW),
    Row("_gate_failed: at the limit, roll back", rollout(), RolloutPhase.ROLLED_BACK,
        [R.ROLLED_BACK], {"old": 6}, seconds=61, ready=CANARY_READY, stats=BAD),
    Row("_gate_failed: at the limit, no auto rollback", rollout(), RolloutPhase.DEGRADED,
        [R.GATE_FAILED], {"old": 5, "new": 1}, seconds=61, ready=CANARY_READY, stats=BAD,
        policy={"auto_rollback": False}),
    Row("_gate_failed: below the limit, judge again", rollout(), RolloutPhase.ANALYZING,
        [R.GATE_FAILED], {"old": 5, "new": 1}, seconds=61, ready=CANARY_READY, stats=BAD,
        policy={"initial": InitialStage(soak_seconds=60, gate=GateSpec(min_tasks=10,
                                                                       failure_limit=2))}),
]  # fmt: skip


@pytest.mark.parametrize("row", ROWS, ids=[row.transition for row in ROWS])
def test_transition(row: Row) -> None:
    capabilities = {**CAPS, "newer": frozenset({"chat"})}
    observation = Observation(
        replicas=row.replicas,
        update_revision=row.update,
        current_revision="old",
        ready=row.ready,
        capabilities=capabilities,
        stats=row.stats,
        controls=row.controls,
    )
    policy = POLICY.model_copy(update=row.policy)
    now = T0 + dt.timedelta(seconds=row.seconds)

    decision = decide(policy, observation, row.state, now)

    phase = decision.state.phase if decision.state is not None else None
    assert phase is row.expect_phase
    assert [h.reason for h in decision.happened] == row.expect_reasons
    assert decision.desired == row.expect_desired
    if decision.state is not None and decision.happened:
        assert decision.state.history[-1] == decision.happened[-1]
        assert decision.state.message == decision.happened[-1].message
    if row.expect_step is not None:
        assert decision.state is not None
        state = decision.state
        assert (state.stage, state.step, state.canary_agents) == row.expect_step
    if row.expect_message is not None:
        assert decision.state is not None
        assert decision.state.message == row.expect_message


def test_the_history_keeps_the_last_hundred_entries() -> None:
    entry = HistoryEntry(
        at=T0, stage=Stage.INITIAL, step=0, canary_agents=1, reason=R.STARTED, message="old"
    )
    state = rollout(history=[entry] * 100)
    seen = Observation(replicas=6, update_revision="new", current_revision="old",
                       controls=Controls(abort=True))  # fmt: skip
    decision = decide(POLICY, seen, state, T0)
    assert decision.state is not None
    assert len(decision.state.history) == 100
    assert decision.state.history[-1].reason is R.ABORTED
    assert decision.state.history[0].message == "old"


@pytest.mark.parametrize(
    "value",
    [
        Observation(replicas=1, update_revision="a", current_revision=None),
        Decision(None, {"a": 1}),
    ],
)
def test_what_decide_takes_and_gives_cannot_be_edited_afterwards(value: object) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        value.replicas = 2  # type: ignore[attr-defined]


def test_the_table_names_every_transition_function() -> None:
    """A transition added to `decide` without a row here fails this test."""
    named = {
        name
        for name in vars(rollout_module)
        if name.startswith("_") and callable(getattr(rollout_module, name))
        and name not in {"_Round", "_entry", "_snapshot", "_complete"}
        and not name.startswith("__")
    }  # fmt: skip
    covered = {row.transition.split(":")[0] for row in ROWS}
    assert named <= covered, f"transitions without a row: {sorted(named - covered)}"
