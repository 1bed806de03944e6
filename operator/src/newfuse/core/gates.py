"""Canary gates: a revision's finished tasks, and the verdict a stage's gate gives on them.

Separate from the state machine (newfuse.core.rollout) because the numbers are what users tune and
argue about: every threshold of GateSpec is applied here and nowhere else.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass

from newfuse.api.rollout import GateResult, GateSpec, GateVerdict, Measured, RevisionCounts


@dataclass(frozen=True)
class RevisionStats:
    """Finished tasks of one revision (cumulative) and its agents' worst p95 latency.

    Tasks it refused (dead-lettered without running: a bad or unknown signature, say) count as
    failures, so a canary that cannot take the fleet's work fails its gate instead of idling.
    """

    completed: int = 0
    failed: int = 0
    p95_latency_ms: float | None = None
    rejected: int = 0
    tokens: int = 0
    cost: float = 0.0

    def since(self, baseline: RevisionCounts | None) -> RevisionStats:
        """The tasks finished (and the usage counted) after ``baseline`` was taken."""
        if baseline is None:
            return self
        return RevisionStats(
            max(0, self.completed - baseline.completed),
            max(0, self.failed - baseline.failed),
            self.p95_latency_ms,
            max(0, self.rejected - baseline.rejected),
            max(0, self.tokens - baseline.tokens),
            max(0.0, self.cost - baseline.cost),
        )

    def per_success(self, unit: str) -> float | None:
        """Tokens or cost per successful task (failures' usage counts too), or None without."""
        spent = self.tokens if unit == "tokens" else self.cost
        return round(spent / self.completed, 6) if self.completed and spent else None

    @property
    def tasks(self) -> int:
        """Finished or refused tasks."""
        return self.completed + self.failed + self.rejected

    @property
    def error_rate(self) -> float | None:
        """(Failed + refused) / tasks, or None with no tasks."""
        return (self.failed + self.rejected) / self.tasks if self.tasks else None


def evaluate_gate(
    gate: GateSpec, canary: RevisionStats, stable: RevisionStats | None, now: dt.datetime
) -> GateVerdict:
    """Judge the canary's metrics (since its step began) against the gate and the stable ones."""
    stable_error = stable.error_rate if stable is not None else None
    measured = Measured(
        tasks=canary.tasks,
        success_rate=None if canary.error_rate is None else round(1 - canary.error_rate, 4),
        error_rate=None if canary.error_rate is None else round(canary.error_rate, 4),
        p95_latency_ms=canary.p95_latency_ms,
        stable_error_rate=None if stable_error is None else round(stable_error, 4),
        canary_share=_share(canary, stable),
        tokens_per_task=canary.per_success("tokens"),
        stable_tokens_per_task=stable.per_success("tokens") if stable is not None else None,
        cost_per_task=canary.per_success("cost"),
        stable_cost_per_task=stable.per_success("cost") if stable is not None else None,
    )

    def verdict(result: GateResult, reason: str) -> GateVerdict:
        if canary.rejected and result is GateResult.FAILED:
            reason += f" ({canary.rejected} of {canary.tasks} refused unrun: see the DLQ)"
        return GateVerdict(result=result, reason=reason, measured=measured, at=now)

    if canary.tasks < max(gate.min_tasks, 1) and gate.min_tasks > 0:
        return verdict(
            GateResult.INCONCLUSIVE, f"{canary.tasks}/{gate.min_tasks} canary tasks finished"
        )
    error = canary.error_rate or 0.0
    if gate.min_success_rate is not None and 1 - error < gate.min_success_rate:
        return verdict(
            GateResult.FAILED, f"success rate {1 - error:.1%} < {gate.min_success_rate:.1%}"
        )
    if gate.max_error_rate is not None and error > gate.max_error_rate:
        return verdict(GateResult.FAILED, f"error rate {error:.1%} > {gate.max_error_rate:.1%}")
    margin = gate.max_error_rate_increase
    if margin is not None and stable_error is not None and error > stable_error + margin:
        return verdict(
            GateResult.FAILED, f"error rate {error:.1%} > stable {stable_error:.1%} + {margin:.1%}"
        )
    if (costly := cost_increase(gate.max_cost_increase, canary, stable)) is not None:
        return verdict(GateResult.FAILED, costly)
    if (
        gate.max_p95_latency_ms is not None
        and (canary.p95_latency_ms or 0) > gate.max_p95_latency_ms
    ):
        return verdict(
            GateResult.FAILED,
            f"p95 latency {canary.p95_latency_ms:.0f} ms > {gate.max_p95_latency_ms:.0f} ms",
        )
    return verdict(GateResult.PASSED, f"{canary.tasks} tasks, error rate {error:.1%}")


def _share(canary: RevisionStats, stable: RevisionStats | None) -> float | None:
    # Canary agents read from the same consumer group, so their share of the work follows their
    # share of the agents; reporting it shows the gate judged real traffic.
    total = canary.tasks + (stable.tasks if stable is not None else 0)
    return round(canary.tasks / total, 4) if total else None


def revision_stats(
    counts: Mapping[str, tuple[int, int, int]],
    p95_by_revision: Mapping[str, float],
    usage: Mapping[str, tuple[int, float]] | None = None,
) -> dict[str, RevisionStats]:
    """Per-revision stats: Redis counters, agents' p95s, model usage (tokens, cost)."""
    usage = usage or {}
    revisions = set(counts) | set(p95_by_revision) | set(usage)
    stats = {}
    for rev in revisions:
        completed, failed, rejected = counts.get(rev, (0, 0, 0))
        tokens, cost = usage.get(rev, (0, 0.0))
        p95 = p95_by_revision.get(rev)
        stats[rev] = RevisionStats(completed, failed, p95, rejected, tokens, cost)
    return stats


def cost_increase(
    limit: float | None, canary: RevisionStats, stable: RevisionStats | None
) -> str | None:
    """Why the canary's usage per successful task fails the gate, or None.

    Cost is compared when both revisions have one (a price table); tokens otherwise.
    """
    if limit is None or stable is None:
        return None
    unit = "cost" if canary.cost and stable.cost else "tokens"
    mine, theirs = canary.per_success(unit), stable.per_success(unit)
    if mine is None or theirs is None or mine <= theirs * (1 + limit):
        return None
    return (
        f"{unit} per successful task {mine:g} > stable {theirs:g} + {limit:.0%} "
        f"({mine / theirs:.2f}x)"
    )


def combine(
    verdict: GateVerdict, result: GateResult, reason: str, measured: Measured
) -> GateVerdict:
    """The stage's verdict with another gate's added: either failing fails; both must pass."""
    if GateResult.FAILED in (verdict.result, result):
        reason = reason if result is GateResult.FAILED else verdict.reason
        result = GateResult.FAILED
    elif GateResult.INCONCLUSIVE in (verdict.result, result):
        reason = verdict.reason if verdict.result is GateResult.INCONCLUSIVE else reason
        result = GateResult.INCONCLUSIVE
    else:
        reason = f"{verdict.reason}; {reason}"
    return verdict.model_copy(update={"result": result, "reason": reason, "measured": measured})
