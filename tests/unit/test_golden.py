"""The golden-task gate's arithmetic, scorers and case parsing, as tables; and its rollback.

newfuse.core.golden is pure: these rows are the whole of what it decides. The last tests drive
`decide` with a golden observation, the way the controller does, and check the rollback it leads to
carries the verdict's numbers.
"""

from __future__ import annotations

import datetime as dt
import re

import pytest

from newfuse.api.analysis import AnalysisSpec, GoldenTasksSpec
from newfuse.api.rollout import (
    GateResult,
    GateSpec,
    GateVerdict,
    InitialStage,
    Measured,
    PhasedPolicy,
    RolloutPhase,
    RolloutReason,
    RolloutState,
    Stage,
)
from newfuse.core.gates import RevisionStats
from newfuse.core.golden import (
    GoldenCasesError,
    GoldenObservation,
    GoldenScore,
    golden_run,
    judge,
    parse_cases,
    passes,
    run_id,
    score,
    wants_run,
    with_golden,
)
from newfuse.core.rollout import Observation, decide
from newfuse.wire.golden import GoldenOutput

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
CASES_YAML = """
- name: greet
  handler: echo
  input: {text: hello}
  expect: {exact: {text: hello}}
- name: shout
  handler: echo
  input: "quiet please"
  expect: {contains: quiet}
- name: shape
  handler: echo
  input: {n: 3}
  expect: {jsonSchema: {type: object, required: [n], properties: {n: {type: integer}}}}
- name: pattern
  handler: echo
  input: abc-123
  expect: {regex: '^[a-z]+-\\d+$'}
"""
CASES = parse_cases(CASES_YAML, "cm")
SPEC = GoldenTasksSpec(config_map="cm", min_pass_rate=0.9, max_pass_rate_drop=0.05)


def state(**kw: object) -> RolloutState:
    values: dict[str, object] = {
        "phase": RolloutPhase.ANALYZING,
        "stable_revision": "old",
        "canary_revision": "new",
        "canary_agents": 1,
        "step_started_at": T0,
    }
    return RolloutState.model_validate(values | kw)


# -- parsing: a bad case is refused naming the case and its field ---------------------------------


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{a: 1}", "expected a non-empty list of cases"),
        ("[]", "expected a non-empty list of cases"),
        (": : :", "not YAML or JSON"),
        ("- {name: a, handler: echo}", r"\[0\]\.expect: Field required"),
        ("- {name: a, handler: echo, expect: {}}", r"\[0\]\.expect: .*set exactly one"),
        (
            "- {name: a, handler: echo, expect: {exact: 1, contains: x}}",
            r"set exactly one of .* \(got \['exact', 'contains'\]\)",
        ),
        ("- {name: 'a b', handler: echo, expect: {exact: 1}}", r"\[0\]\.name: String should"),
        (
            "- {name: a, handler: echo, expect: {exact: 1}}\n- {name: a, handler: x, expect: "
            "{exact: 2}}",
            r"unique \(repeated: a\)",
        ),
        ("- {name: a, handler: echo, expect: {regex: '('}}", r"\[0\]\.expect\.regex: "),
        (
            "- {name: a, handler: echo, expect: {jsonSchema: {type: 12}}}",
            r"\[0\]\.expect\.jsonSchema: ",
        ),
        ("- {name: a, handler: echo, expect: {exact: 1}, extra: 2}", r"\[0\]\.extra: Extra"),
    ],
)
def test_bad_cases_are_refused_naming_the_field(text: str, message: str) -> None:
    with pytest.raises(GoldenCasesError, match=rf"^ConfigMap x: .*{message}"):
        parse_cases(text, "ConfigMap x")


def test_cases_parse_from_yaml_and_json_alike() -> None:
    assert [c.name for c in CASES] == ["greet", "shout", "shape", "pattern"]
    as_json = '[{"name": "a", "handler": "echo", "input": null, "expect": {"exact": null}}]'
    [case] = parse_cases(as_json, "cm")
    assert case.expect.scorer == "exact"
    assert passes(case.expect, None)


# -- scorers --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("case", "output", "right"),
    [
        ("greet", {"text": "hello"}, True),
        ("greet", {"text": "HELLO"}, False),
        ("greet", {"text": "hello", "more": 1}, False),
        ("shout", "quiet please", True),
        ("shout", "QUIET PLEASE", False),
        ("shout", {"said": "quiet"}, True),  # a JSON output is judged as its JSON text
        ("shape", {"n": 3}, True),
        ("shape", {"n": "3"}, False),
        ("shape", "n", False),
        ("pattern", "abc-123", True),
        ("pattern", "ABC-123", False),
    ],
)
def test_each_scorer_tells_a_right_answer_from_a_wrong_one(
    case: str, output: object, right: bool
) -> None:
    [found] = [c for c in CASES if c.name == case]
    assert passes(found.expect, output) is right


# -- scoring a run, and the gate's arithmetic ------------------------------------------------------


def outputs(
    revision: str, answers: dict[str, object], errors: tuple[str, ...] = ()
) -> dict[str, GoldenOutput]:
    out = {f"{revision}/{k}": GoldenOutput(ok=True, output=v) for k, v in answers.items()}
    out |= {f"{revision}/{k}": GoldenOutput(ok=False, error="boom") for k in errors}
    return out


RIGHT = {"greet": {"text": "hello"}, "shout": "quiet please", "shape": {"n": 3}, "pattern": "a-1"}


def test_a_revision_is_scored_per_case_and_an_error_is_a_wrong_answer() -> None:
    seen = outputs("new", {**RIGHT, "greet": {"text": "HELLO"}}, errors=()) | outputs(
        "old", {"shout": "quiet please"}, errors=("greet",)
    )
    assert score(CASES, seen, "new") == GoldenScore(3, 1, 0, ("greet",))
    assert score(CASES, seen, "old") == GoldenScore(1, 1, 2, ("greet",))
    assert score(CASES, {}, "new").pass_rate is None


@pytest.mark.parametrize(
    ("canary", "stable", "spec", "result", "reason"),
    [
        (GoldenScore(3, 0, 1), GoldenScore(4), SPEC, GateResult.INCONCLUSIVE, "1 golden case"),
        (GoldenScore(4), GoldenScore(3, 0, 1), SPEC, GateResult.INCONCLUSIVE, "1 golden case"),
        (GoldenScore(), None, SPEC, GateResult.INCONCLUSIVE, "0 golden case"),
        (GoldenScore(4), GoldenScore(4), SPEC, GateResult.PASSED, "golden 4/4 right"),
        (GoldenScore(9, 1), None, SPEC, GateResult.PASSED, "golden 9/10"),  # 90% is enough
        (
            GoldenScore(8, 2, 0, ("a", "b")),
            None,
            SPEC,
            GateResult.FAILED,
            r"golden pass rate 80.0% < 90.0% \(2 of 10 wrong: a, b\)",
        ),
        (
            GoldenScore(19, 1, 0, ("a",)),
            GoldenScore(20),
            SPEC.model_copy(update={"max_pass_rate_drop": 0.0}),
            GateResult.FAILED,
            r"golden pass rate 95.0% < stable 100.0% - 0.0%",
        ),
        (GoldenScore(19, 1), GoldenScore(20), SPEC, GateResult.PASSED, "19/20"),  # drop 0.05
        (
            GoldenScore(18, 2),
            GoldenScore(20),
            SPEC.model_copy(update={"min_pass_rate": 0.5}),
            GateResult.FAILED,
            "< stable 100.0% - 5.0%",
        ),
        (
            GoldenScore(18, 2),
            GoldenScore(20),
            SPEC.model_copy(update={"min_pass_rate": 0.5, "max_pass_rate_drop": None}),
            GateResult.PASSED,
            "18/20",
        ),
        (
            GoldenScore(1, 1),
            GoldenScore(0, 2),
            SPEC.model_copy(update={"min_pass_rate": 0}),
            GateResult.PASSED,
            "1/2",
        ),
    ],
)
def test_the_golden_gate_judges_the_pass_rate_and_its_drop_from_stable(
    canary: GoldenScore,
    stable: GoldenScore | None,
    spec: GoldenTasksSpec,
    result: GateResult,
    reason: str,
) -> None:
    got, why = judge(spec, canary, stable)
    assert got is result
    assert re.search(reason, why), why


BASE = {
    r: GateVerdict(result=r, reason=f"base {r.value}", measured=Measured(tasks=20), at=T0)
    for r in GateResult
}
PASSING = GoldenObservation(run_id(state()), {"new": GoldenScore(4), "old": GoldenScore(4)})
FAILING = GoldenObservation(
    run_id(state()), {"new": GoldenScore(0, 4, 0, ("greet",)), "old": GoldenScore(4)}
)
PENDING = GoldenObservation(run_id(state()), {"new": GoldenScore(0, 0, 4), "old": GoldenScore(4)})


@pytest.mark.parametrize(
    ("base", "seen", "result", "reason"),
    [
        (GateResult.PASSED, PASSING, GateResult.PASSED, "base Passed; golden 4/4 right"),
        (GateResult.PASSED, FAILING, GateResult.FAILED, "golden pass rate 0.0%"),
        (GateResult.INCONCLUSIVE, FAILING, GateResult.FAILED, "golden pass rate 0.0%"),
        (GateResult.FAILED, PASSING, GateResult.FAILED, "base Failed"),
        (GateResult.FAILED, PENDING, GateResult.FAILED, "base Failed"),
        (GateResult.PASSED, PENDING, GateResult.INCONCLUSIVE, "4 golden case"),
        (GateResult.INCONCLUSIVE, PASSING, GateResult.INCONCLUSIVE, "base Inconclusive"),
        (GateResult.PASSED, None, GateResult.INCONCLUSIVE, "not published yet"),
        (
            GateResult.PASSED,
            GoldenObservation(problem="cm: not found"),
            GateResult.INCONCLUSIVE,
            "cm: not found",
        ),
        # Scores of another step's run never judge this one.
        (
            GateResult.PASSED,
            GoldenObservation("other", PASSING.scores),
            GateResult.INCONCLUSIVE,
            "not published yet",
        ),
    ],
)
def test_either_gate_failing_fails_the_step_and_both_must_pass(
    base: GateResult, seen: GoldenObservation | None, result: GateResult, reason: str
) -> None:
    verdict = with_golden(BASE[base], SPEC, seen, state())
    assert (verdict.result, reason in verdict.reason) == (result, True), verdict.reason


def test_the_verdict_carries_the_golden_numbers() -> None:
    verdict = with_golden(BASE[GateResult.PASSED], SPEC, FAILING, state())
    measured = verdict.measured
    assert (measured.golden_cases, measured.golden_pass_rate) == (4, 0.0)
    assert (measured.stable_golden_pass_rate, measured.golden_failed) == (1.0, ["greet"])
    assert measured.tasks == 20, "the stage gate's own numbers stay"


def test_a_run_is_new_for_every_step_and_judgement_and_skips_stage_three() -> None:
    first = state()
    assert run_id(first) != run_id(state(step=1, stage=Stage.GRADUAL))
    assert run_id(first) != run_id(state(step_started_at=T0 + dt.timedelta(seconds=1)))
    assert wants_run(first)
    assert not wants_run(state(stage=Stage.FULL))
    assert not wants_run(state(phase=RolloutPhase.ROLLED_BACK))
    assert not wants_run(None)
    run = golden_run(first, CASES)
    assert run.revisions == ["new", "old"]
    assert "expect" not in run.model_dump_json()
    assert golden_run(state(stable_revision="new"), CASES).revisions == ["new"]


# -- the rollout it leads to -----------------------------------------------------------------------

POLICY = PhasedPolicy(
    initial=InitialStage(soak_seconds=60, gate=GateSpec(min_tasks=10)),
    analysis=AnalysisSpec(golden_tasks=SPEC),
)
HEALTHY = {"new": RevisionStats(completed=50), "old": RevisionStats(completed=500)}


def observe(golden: GoldenObservation | None) -> Observation:
    return Observation(
        replicas=3,
        update_revision="new",
        current_revision="old",
        ready={"old": 2, "new": 1},
        stats=HEALTHY,
        golden=golden,
    )


def test_a_wrong_answering_canary_with_no_errors_is_rolled_back_with_the_numbers() -> None:
    now = T0 + dt.timedelta(seconds=61)
    without = POLICY.model_copy(update={"analysis": AnalysisSpec()})
    plain = decide(without, observe(None), state(), now)
    assert plain.state is not None
    assert plain.state.phase is RolloutPhase.PROMOTING, "today's gates pass it"
    decision = decide(POLICY, observe(FAILING), state(), now)
    assert decision.state is not None
    assert decision.state.phase is RolloutPhase.ROLLED_BACK
    [entry] = [h for h in decision.happened if h.reason is RolloutReason.ROLLED_BACK]
    assert entry.verdict is not None
    assert entry.verdict.measured.golden_pass_rate == 0.0
    assert "golden pass rate 0.0% < 90.0%" in entry.message
    assert decision.desired == {"old": 3}


def test_the_golden_gate_waits_for_its_cases_then_promotes() -> None:
    now = T0 + dt.timedelta(seconds=61)
    waiting = decide(POLICY, observe(PENDING), state(), now)
    assert waiting.state is not None
    assert waiting.state.phase is RolloutPhase.ANALYZING
    assert waiting.state.last_verdict is not None
    assert "golden case run(s) not finished" in waiting.state.last_verdict.reason
    passed = decide(POLICY, observe(PASSING), state(), now)
    assert passed.state is not None
    assert passed.state.phase is RolloutPhase.PROMOTING
