"""What the rollout decision tests share: a phased policy, and a clock that starts at T0."""

from __future__ import annotations

import datetime as dt

from newfuse.api.rollout import GateSpec, GradualStage, InitialStage, PhasedPolicy

T0 = dt.datetime(2026, 11, 21, 12, 0, tzinfo=dt.UTC)
POLICY = PhasedPolicy(
    initial=InitialStage(soak_seconds=60, gate=GateSpec(min_tasks=10)),
    gradual=GradualStage(step=1, interval_seconds=30, gate=GateSpec(min_tasks=10)),
    progress_deadline_seconds=300,
)


def at(seconds: float) -> dt.datetime:
    return T0 + dt.timedelta(seconds=seconds)
