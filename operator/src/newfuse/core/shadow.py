"""Shadow tasks as a gate: how often the canary answers live work as stable did, and at what price.

Pure, like newfuse.core.golden: the cases (live tasks with the stable revision's answer, time and
cost) and the canary's outputs come in as the agents recorded them, a verdict goes out. Agreement
is JSON equality of the two outputs, or, with `judge` criteria, the stable model's grade; an error
on the canary is a disagreement.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from newfuse.api.analysis import ShadowSpec
from newfuse.api.rollout import GateResult, GateVerdict, RolloutState
from newfuse.core.gates import combine
from newfuse.core.golden import run_id
from newfuse.wire.golden import GoldenOutput, judge_field
from newfuse.wire.shadow import ShadowCase, ShadowConfig


def shadow_config(state: RolloutState, spec: ShadowSpec) -> ShadowConfig:
    """The run agents see for the state's current step (same id scheme as golden runs)."""
    return ShadowConfig(
        id=run_id(state),
        canary=state.canary_revision,
        stable=state.stable_revision,
        percent=spec.percent,
        max_samples=spec.max_samples,
        judge=spec.judge,
    )


@dataclass(frozen=True)
class ShadowScore:
    """The canary's answers to the copies it ran, against stable's."""

    samples: int = 0
    agreed: int = 0
    canary_seconds: float = 0.0
    stable_seconds: float = 0.0
    canary_cost: float = 0.0
    stable_cost: float = 0.0

    @property
    def agreement(self) -> float | None:
        """Agreed / answered, or None before any answer."""
        return self.agreed / self.samples if self.samples else None

    @staticmethod
    def ratio(mine: float, theirs: float) -> float | None:
        """Mine / theirs, or None when stable's is zero."""
        return round(mine / theirs, 4) if theirs > 0 else None


@dataclass(frozen=True)
class ShadowObservation:
    """The current run's score, or why there is none (``problem``)."""

    run: str = ""
    score: ShadowScore = field(default_factory=ShadowScore)
    problem: str | None = None


def score(
    cases: Mapping[str, ShadowCase], outputs: Mapping[str, GoldenOutput], *, judged: bool = False
) -> ShadowScore:
    """Compare each answered copy with the stable answer to the same task.

    ``judged``: agreement is the stable model's grade (judge_field), and an answer not graded yet
    is not a sample yet; otherwise it is JSON equality.
    """
    samples = agreed = 0
    seconds, cost = [0.0, 0.0], [0.0, 0.0]
    for task_id, out in outputs.items():
        case = cases.get(task_id)
        if case is None:
            continue
        grade = outputs.get(judge_field(task_id)) if judged and out.ok else None
        if judged and out.ok and grade is None:
            continue
        samples += 1
        agreed += out.ok and (grade.ok if grade is not None else out.output == case.output)
        seconds[0] += out.seconds
        seconds[1] += case.seconds
        cost[0] += out.cost
        cost[1] += case.cost
    return ShadowScore(samples, agreed, seconds[0], seconds[1], cost[0], cost[1])


def judge(spec: ShadowSpec, seen: ShadowScore) -> tuple[GateResult, str]:
    """The shadow gate: enough answered copies, then agreement, then latency and cost."""
    if seen.samples < spec.min_samples or seen.agreement is None:
        return GateResult.INCONCLUSIVE, f"{seen.samples}/{spec.min_samples} shadow copies answered"
    rate = seen.agreement
    if rate < spec.min_agreement:
        return GateResult.FAILED, (
            f"shadow agreement {rate:.1%} < {spec.min_agreement:.1%} "
            f"({seen.samples - seen.agreed} of {seen.samples} live tasks answered otherwise)"
        )
    for what, limit, ratio in (
        (
            "latency",
            spec.max_latency_increase,
            seen.ratio(seen.canary_seconds, seen.stable_seconds),
        ),
        ("cost", spec.max_cost_increase, seen.ratio(seen.canary_cost, seen.stable_cost)),
    ):
        if limit is not None and ratio is not None and ratio > 1 + limit:
            return GateResult.FAILED, f"shadow {what} {ratio:.2f}x stable's > 1 + {limit:.0%}"
    return GateResult.PASSED, f"shadow {seen.agreed}/{seen.samples} agreed"


def with_shadow(
    verdict: GateVerdict, spec: ShadowSpec, seen: ShadowObservation | None, state: RolloutState
) -> GateVerdict:
    """The verdict with the shadow gate's added: either failing fails the step."""
    measured = verdict.measured
    if seen is None or seen.problem is not None or seen.run != run_id(state):
        result = GateResult.INCONCLUSIVE
        reason = (seen.problem if seen else None) or "shadow run not published yet"
    else:
        result, reason = judge(spec, seen.score)
        s = seen.score
        measured = measured.model_copy(
            update={
                "shadow_samples": s.samples,
                "shadow_agreement": None if s.agreement is None else round(s.agreement, 4),
                "shadow_latency_ratio": s.ratio(s.canary_seconds, s.stable_seconds),
                "shadow_cost_ratio": s.ratio(s.canary_cost, s.stable_cost),
            }
        )
    return combine(verdict, result, reason, measured)
