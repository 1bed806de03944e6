"""The shadow gate's arithmetic, as a table; the sample; and the rollback it leads to."""

from __future__ import annotations

import datetime as dt
import re

import pytest

from factories import analyzing
from newfuse.api.analysis import AnalysisSpec, ShadowSpec
from newfuse.api.rollout import (
    GateResult,
    GateSpec,
    GateVerdict,
    InitialStage,
    Measured,
    PhasedPolicy,
    RolloutPhase,
    RolloutState,
)
from newfuse.core.gates import RevisionStats
from newfuse.core.golden import run_id
from newfuse.core.metrics import gate_line
from newfuse.core.rollout import Observation, decide
from newfuse.core.shadow import (
    ShadowObservation,
    ShadowScore,
    judge,
    score,
    shadow_config,
    with_shadow,
)
from newfuse.wire.golden import GoldenOutput
from newfuse.wire.shadow import ShadowCase, ShadowConfig

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
SPEC = ShadowSpec(min_samples=10, min_agreement=0.9, max_latency_increase=0.5, max_cost_increase=1)


def state() -> RolloutState:
    return analyzing(T0)


def test_copies_are_scored_against_the_stable_answer_to_the_same_task() -> None:
    cases = {
        f"t{i}": ShadowCase(handler="echo", output={"a": i}, seconds=1, cost=2) for i in range(4)
    }
    outputs = {
        "t0": GoldenOutput(ok=True, output={"a": 0}, seconds=2, cost=2),
        "t1": GoldenOutput(ok=True, output={"a": "1"}, seconds=2, cost=2),  # another answer
        "t2": GoldenOutput(ok=False, error="boom", seconds=2, cost=2),  # an error disagrees
        "orphan": GoldenOutput(ok=True, output=1),  # no case (a replaced run's): ignored
    }
    seen = score(cases, outputs)
    assert (seen.samples, seen.agreed) == (3, 1)
    assert seen.agreement == pytest.approx(1 / 3)
    assert seen.ratio(seen.canary_seconds, seen.stable_seconds) == 2.0
    assert seen.ratio(seen.canary_cost, seen.stable_cost) == 1.0
    assert ShadowScore().ratio(1, 0) is None


@pytest.mark.parametrize(
    ("seen", "result", "reason"),
    [
        (ShadowScore(9, 9, 9, 9), GateResult.INCONCLUSIVE, "9/10 shadow copies answered"),
        (ShadowScore(10, 9, 10, 10), GateResult.PASSED, "shadow 9/10 agreed"),
        (ShadowScore(10, 8, 10, 10), GateResult.FAILED, r"agreement 80.0% < 90.0% \(2 of 10 live"),
        (
            ShadowScore(10, 10, 16, 10),
            GateResult.FAILED,
            r"shadow latency 1.60x stable's > 1 \+ 50%",
        ),
        (ShadowScore(10, 10, 15, 10), GateResult.PASSED, "10/10"),
        (ShadowScore(10, 10, 10, 10, 2.1, 1), GateResult.FAILED, "shadow cost 2.10x"),
        (ShadowScore(10, 10, 10, 0, 5, 0), GateResult.PASSED, "10/10"),  # no stable time or cost
    ],
)
def test_the_shadow_gate_judges_agreement_latency_and_cost(
    seen: ShadowScore, result: GateResult, reason: str
) -> None:
    got, why = judge(SPEC, seen)
    assert got is result
    assert re.search(reason, why), why


def test_the_sample_is_by_task_id_and_its_share_holds() -> None:
    config = ShadowConfig(id="r", canary="new", stable="old", percent=10, max_samples=5)
    picked = [t for t in (f"task-{i}" for i in range(10_000)) if config.sampled(t)]
    assert 900 < len(picked) < 1100
    assert all(config.sampled(t) for t in picked), "every agent picks the same tasks"
    assert shadow_config(state(), SPEC).id == run_id(state())


BASE = GateVerdict(result=GateResult.PASSED, reason="base", measured=Measured(tasks=30), at=T0)


def test_the_verdict_carries_the_shadow_numbers_and_a_stale_run_judges_nothing() -> None:
    seen = ShadowObservation(run_id(state()), ShadowScore(10, 2, 20, 10, 1, 1))
    verdict = with_shadow(BASE, SPEC, seen, state())
    assert verdict.result is GateResult.FAILED
    m = verdict.measured
    assert (m.shadow_samples, m.shadow_agreement, m.shadow_latency_ratio) == (10, 0.2, 2.0)
    assert m.shadow_cost_ratio == 1.0
    stale = with_shadow(BASE, SPEC, ShadowObservation("other", seen.score), state())
    assert stale.result is GateResult.INCONCLUSIVE
    assert with_shadow(BASE, SPEC, None, state()).reason == "shadow run not published yet"


def test_disagreement_above_the_threshold_rolls_the_canary_back() -> None:
    policy = PhasedPolicy(
        initial=InitialStage(soak_seconds=60, gate=GateSpec(min_tasks=10)),
        analysis=AnalysisSpec(shadow=SPEC),
    )
    obs = Observation(
        replicas=3,
        update_revision="new",
        current_revision="old",
        ready={"old": 2, "new": 1},
        stats={"new": RevisionStats(completed=50), "old": RevisionStats(completed=500)},
        shadow=ShadowObservation(run_id(state()), ShadowScore(20, 0, 20, 20)),
    )
    decision = decide(policy, obs, state(), T0 + dt.timedelta(seconds=61))
    assert decision.state is not None
    assert decision.state.phase is RolloutPhase.ROLLED_BACK
    assert "shadow agreement 0.0%" in decision.state.message


def test_the_live_page_line_names_the_agreement() -> None:
    seen = ShadowObservation(run_id(state()), ShadowScore(10, 2, 20, 10, 1, 1))
    line = gate_line(with_shadow(BASE, SPEC, seen, state()))
    assert "shadow 20% agreed of 10" in line
