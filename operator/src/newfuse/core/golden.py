"""Golden tasks as a gate: parse the cases, score each output, judge canary against stable.

Pure, like newfuse.core.gates: the cases come in as the ConfigMap's text, the outputs as the
agents recorded them, and out comes a verdict with its numbers. Scoring happens here, in the
operator, not in the agent being judged: a canary with a broken image must not grade itself.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import jsonschema
import yaml
from pydantic import TypeAdapter, ValidationError

from newfuse.api.analysis import Expectation, GoldenCase, GoldenTasksSpec
from newfuse.api.rollout import TERMINAL_PHASES, GateResult, GateVerdict, RolloutState, Stage
from newfuse.core.gates import combine
from newfuse.wire.golden import GoldenCaseRun, GoldenOutput, GoldenRun, judge_field, output_field
from newfuse.wire.review import Review, ReviewKind, Verdict

MAX_CASES = 500
_CASES = TypeAdapter(list[GoldenCase])


class GoldenCasesError(ValueError):
    """The ConfigMap's cases cannot be used; the message names the case and field."""


def parse_cases(text: str, where: str) -> list[GoldenCase]:
    """The cases in ``text`` (YAML or JSON), checked; ``where`` names the source in errors."""
    try:
        raw = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise GoldenCasesError(f"{where}: not YAML or JSON: {exc}") from exc
    if not isinstance(raw, list) or not raw:
        raise GoldenCasesError(f"{where}: expected a non-empty list of cases")
    if len(raw) > MAX_CASES:
        raise GoldenCasesError(f"{where}: {len(raw)} cases, at most {MAX_CASES}")
    try:
        cases = _CASES.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        path = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in first["loc"])
        raise GoldenCasesError(f"{where}: {path.lstrip('.')}: {first['msg']}") from exc
    names = [c.name for c in cases]
    if dup := sorted({n for n in names if names.count(n) > 1}):
        raise GoldenCasesError(f"{where}: case names must be unique (repeated: {', '.join(dup)})")
    for i, case in enumerate(cases):
        _check_expectation(case.expect, f"{where}: [{i}].expect")
    return cases


def _check_expectation(expect: Expectation, where: str) -> None:
    try:
        if expect.regex is not None:
            re.compile(expect.regex)
        if expect.json_schema is not None:
            jsonschema.Draft202012Validator.check_schema(expect.json_schema)
    except (re.error, jsonschema.SchemaError) as exc:
        raise GoldenCasesError(f"{where}.{expect.scorer}: {exc}") from exc


def _text(output: Any) -> str:
    return output if isinstance(output, str) else json.dumps(output, sort_keys=True)


def passes(expect: Expectation, output: Any) -> bool:
    """Whether ``output`` is a right answer by the case's scorer (not llmJudge: a model's)."""
    scorer = expect.scorer
    if scorer == "llmJudge":
        raise ValueError("an llmJudge case is graded by a model: read its judgment")
    if scorer == "exact":
        return bool(output == expect.exact)
    if scorer == "contains":
        return (expect.contains or "") in _text(output)
    if scorer == "regex":
        return re.search(expect.regex or "", _text(output)) is not None
    return jsonschema.Draft202012Validator(expect.json_schema or {}).is_valid(output)


def run_id(state: RolloutState) -> str:
    """The golden run of the state's current judgement: new for each step and each re-judgement."""
    at = int(state.step_started_at.timestamp())
    return f"{state.canary_revision}.{state.stage.value.lower()}.{state.step}.{at}"


def wants_run(state: RolloutState | None) -> bool:
    """A rollout whose current step ends in a gate (stage 3 only soaks)."""
    return (
        state is not None and state.stage is not Stage.FULL and state.phase not in TERMINAL_PHASES
    )


def golden_run(state: RolloutState, cases: Sequence[GoldenCase]) -> GoldenRun:
    """The run the agents see: the cases without their expectations, for canary and stable."""
    revisions = [state.canary_revision]
    if state.stable_revision != state.canary_revision:
        revisions.append(state.stable_revision)
    return GoldenRun(
        id=run_id(state),
        revisions=revisions,
        cases=[
            GoldenCaseRun(
                name=c.name, handler=c.handler, input=c.input, criteria=c.expect.llm_judge
            )
            for c in cases
        ],
        judge=state.stable_revision,
    )


@dataclass(frozen=True)
class GoldenScore:
    """One revision's standing on the run: cases answered right, wrong, and not yet run."""

    passed: int = 0
    failed: int = 0
    pending: int = 0
    wrong: tuple[str, ...] = ()

    @property
    def pass_rate(self) -> float | None:
        """Right / judged, or None before any case is judged."""
        judged = self.passed + self.failed
        return self.passed / judged if judged else None


@dataclass(frozen=True)
class GoldenObservation:
    """The current run's scores per revision, or why there are none (``problem``)."""

    run: str = ""
    scores: Mapping[str, GoldenScore] = field(default_factory=dict)
    problem: str | None = None


def score(
    cases: Sequence[GoldenCase], outputs: Mapping[str, GoldenOutput], revision: str
) -> GoldenScore:
    """Score one revision's outputs; an error raised counts as a wrong answer."""
    passed, wrong, pending = 0, [], 0
    for case in cases:
        right = _right(case, outputs, output_field(revision, case.name))
        if right is None:
            pending += 1
        elif right:
            passed += 1
        else:
            wrong.append(case.name)
    return GoldenScore(passed, len(wrong), pending, tuple(wrong))


def _right(case: GoldenCase, outputs: Mapping[str, GoldenOutput], field: str) -> bool | None:
    """Whether the output in ``field`` is right; None while it (or its judgment) is missing."""
    out = outputs.get(field)
    if out is None or not out.ok:
        return None if out is None else False
    if case.expect.llm_judge is None:
        return passes(case.expect, out.output)
    judgment = outputs.get(judge_field(field))
    return None if judgment is None else judgment.ok


def judge(
    spec: GoldenTasksSpec, canary: GoldenScore, stable: GoldenScore | None
) -> tuple[GateResult, str]:
    """The golden gate: every case judged on canary (and stable), then the two thresholds."""
    waiting = canary.pending + (stable.pending if stable is not None else 0)
    if waiting or canary.pass_rate is None:
        return GateResult.INCONCLUSIVE, f"{waiting} golden case run(s) not finished"
    rate = canary.pass_rate
    cases = canary.passed + canary.failed
    if rate < spec.min_pass_rate:
        return GateResult.FAILED, (
            f"golden pass rate {rate:.1%} < {spec.min_pass_rate:.1%} "
            f"({canary.failed} of {cases} wrong: {', '.join(canary.wrong[:5])})"
        )
    drop = spec.max_pass_rate_drop
    base = stable.pass_rate if stable is not None else None
    if drop is not None and base is not None and rate < base - drop - 1e-9:
        return GateResult.FAILED, (
            f"golden pass rate {rate:.1%} < stable {base:.1%} - {drop:.1%} "
            f"(wrong: {', '.join(canary.wrong[:5])})"
        )
    return GateResult.PASSED, f"golden {canary.passed}/{cases} right"


def with_golden(
    verdict: GateVerdict,
    spec: GoldenTasksSpec,
    seen: GoldenObservation | None,
    state: RolloutState,
) -> GateVerdict:
    """The stage's verdict with the golden gate's added: either failing fails the step."""
    canary, stable = state.canary_revision, state.stable_revision
    measured = verdict.measured
    if seen is None or seen.problem is not None or seen.run != run_id(state):
        result = GateResult.INCONCLUSIVE
        reason = (seen.problem if seen else None) or "golden cases not published yet"
    else:
        mine = seen.scores.get(canary, GoldenScore())
        theirs = seen.scores.get(stable) if stable != canary else None
        result, reason = judge(spec, mine, theirs)
        rates = (mine.pass_rate, theirs.pass_rate if theirs else None)
        measured = measured.model_copy(
            update={
                "golden_cases": mine.passed + mine.failed + mine.pending,
                "golden_pass_rate": None if rates[0] is None else round(rates[0], 4),
                "stable_golden_pass_rate": None if rates[1] is None else round(rates[1], 4),
                "golden_failed": list(mine.wrong[:10]),
            }
        )
    return combine(verdict, result, reason, measured)


def case_from_review(review: Review, name: str | None = None) -> GoldenCase:
    """A golden case from an approved output: its input, and the output as approved (or edited).

    Only an approval says what a right answer is: a rejection or an open review is refused.
    """
    request, decision = review.request, review.decision
    if request.kind is not ReviewKind.OUTPUT:
        raise GoldenCasesError(f"review {request.id} asked a question, not for an output")
    if decision is None or decision.verdict is not Verdict.APPROVE or decision.timed_out:
        state = review.state.value if decision is None else decision.verdict.value
        raise GoldenCasesError(
            f"review {request.id} is {state}: only an output a person approved is a golden answer"
        )
    expected = decision.answer if decision.edited else request.output
    fallback = re.sub(r"[^A-Za-z0-9._-]+", "-", f"review-{request.task_id}")[:128]
    raw = {"name": name or fallback, "handler": request.handler, "input": request.input}
    try:
        return GoldenCase.model_validate({**raw, "expect": {"exact": expected}})
    except ValidationError as exc:
        raise GoldenCasesError(f"--name {name!r}: {exc.errors()[0]['msg']}") from exc


def with_case(text: str | None, case: GoldenCase, where: str) -> str:
    """The ConfigMap key's text with ``case`` appended (YAML); refused if its name is taken."""
    cases = parse_cases(text, where) if text and text.strip() else []
    if any(c.name == case.name for c in cases):
        raise GoldenCasesError(f"{where}: a case named {case.name!r} exists (choose --name)")
    rows = [c.model_dump(mode="json", by_alias=True, exclude_unset=True) for c in cases]
    rows.append(case.model_dump(mode="json", by_alias=True, exclude_unset=True))
    return yaml.safe_dump(rows, sort_keys=False, allow_unicode=True)
