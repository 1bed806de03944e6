"""Every named transition of `decide`, one row each: what it starts from and where it lands.

The rows follow the order in which `decide` tries them (newfuse.core.rollout). A row names the
transition it exercises; test_rollout_decide.py has the longer stories that chain them.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field

import pytest

import newfuse.core.rollout as rollout_module
from newfuse.api.rollout import (
    GateSpec,
    GradualStage,
    InitialStage,
    PhasedPolicy,
    RolloutPhase,
    RolloutReason,
    RolloutState,
    Stage,
)
from newfuse.core.actions import Controls
from newfuse.core.gates import RevisionStats
from newfuse.core.rollout import Observation, decide

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
        {"old": 5, "new": 2}, ready=CANARY_READY, controls=Controls(promote_full=True)),
    Row("_canaries_not_ready: wait", rollout(), RolloutPhase.PROGRESSING, [],
        {"old": 6, "new": 1}, seconds=10),
    Row("_canaries_not_ready: past the deadline, roll back", rollout(), RolloutPhase.ROLLED_BACK,
        [R.DEADLINE_EXCEEDED], {"old": 6}, seconds=301),
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
        stats=GOOD),
    Row("_inconclusive: too few tasks", rollout(), RolloutPhase.ANALYZING, [],
        {"old": 5, "new": 1}, seconds=61, ready=CANARY_READY, stats=FEW),
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
        replicas=6,
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
