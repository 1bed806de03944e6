"""The phased-migration rollout policy and state: `spec.rollout` and `status.rollout`.

Stage 1 (initial) moves a small canary to the new revision and soaks it behind a gate on what the
canary agents report; stage 2 (gradual) moves agents a step at a time, with a gate between steps;
stage 3 (full) moves the rest and decommissions the legacy revision.

`spec.rollout` extends PhasedPolicy; `status.rollout` is a RolloutState. `newfuse.core.rollout`
decides each step from them.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Final

from pydantic import ConfigDict, Field

from newfuse.api.analysis import AnalysisSpec
from newfuse.api.base import CEL, KubeModel, cel


class Stage(StrEnum):
    """The three stages of a rollout: the canary, gradual steps, the cutover."""

    INITIAL = "Initial"
    GRADUAL = "Gradual"
    FULL = "Full"


class RolloutPhase(StrEnum):
    """Where a rollout stands."""

    PROGRESSING = "Progressing"  # moving pods to the target of the current step
    ANALYZING = "Analyzing"  # canary pods ready; soaking and judging the gate
    PROMOTING = "Promoting"  # gate passed; the next step was chosen this round
    PAUSED = "Paused"
    COMPLETED = "Completed"
    ABORTED = "Aborted"
    ROLLED_BACK = "RolledBack"
    DEGRADED = "Degraded"  # stuck past the progress deadline


TERMINAL_PHASES = frozenset(
    {RolloutPhase.COMPLETED, RolloutPhase.ABORTED, RolloutPhase.ROLLED_BACK}
)


class GateResult(StrEnum):
    """A gate's verdict."""

    PASSED = "Passed"
    FAILED = "Failed"
    INCONCLUSIVE = "Inconclusive"


class RolloutAction(StrEnum):
    """What a person can do to a rollout: the CLI's verbs, the Argo CD actions, the audit's words.

    PAUSE and RESUME set spec.rollout.paused; the others are one-shot, written into the
    newfuse.io/rollout-action annotation as "<action>@<time>" and acted on once.
    """

    PAUSE = "pause"
    RESUME = "resume"
    PROMOTE = "promote"
    PROMOTE_FULL = "promote-full"
    ABORT = "abort"
    RETRY = "retry"


# The actions the rollout-action annotation carries (the rest are a spec field).
ONE_SHOT_ACTIONS: Final = frozenset(
    {RolloutAction.PROMOTE, RolloutAction.PROMOTE_FULL, RolloutAction.ABORT, RolloutAction.RETRY}
)


class RolloutReason(StrEnum):
    """Reasons of rollout Events, history entries and conditions."""

    STARTED = "RolloutStarted"
    RESTARTED = "RolloutRestartedForNewRevision"
    STEP_STARTED = "StepStarted"
    GATE_PASSED = "GatePassed"
    GATE_FAILED = "GateFailed"
    PROMOTED = "Promoted"
    PROMOTED_FULL = "PromotedFull"
    PAUSED = "RolloutPaused"
    RESUMED = "RolloutResumed"
    ABORTED = "RolloutAborted"
    RETRIED = "RolloutRetried"
    ROLLED_BACK = "RolledBack"
    REVERTED = "SpecRevertedToStable"
    DEADLINE_EXCEEDED = "ProgressDeadlineExceeded"
    COMPLETED = "RolloutCompleted"
    # Stage 3 waits: live traffic still uses a protocol major the canary does not speak.
    PROTOCOL_HELD = "ProtocolVersionsInUse"


class GateSpec(KubeModel):
    """A verdict over the canary revision's task metrics, measured since its step began."""

    min_tasks: int = Field(
        default=20, ge=0, description="Finished canary tasks before any verdict."
    )
    min_success_rate: float | None = Field(default=0.95, ge=0, le=1, description="Fail below this.")
    max_error_rate: float | None = Field(default=None, ge=0, le=1, description="Fail above this.")
    max_p95_latency_ms: float | None = Field(default=None, gt=0, description="Fail above this p95.")
    max_error_rate_increase: float | None = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Fail if the canary's error rate exceeds the stable one's by more than this.",
    )
    max_cost_increase: float | None = Field(
        default=0.5,
        ge=0,
        description="Fail if the canary's model cost per successful task (tokens, without a "
        "price table) exceeds the stable one's by more than this fraction.",
    )
    failure_limit: int = Field(
        default=1, ge=1, description="Consecutive failed verdicts before rollback."
    )


class InitialStage(KubeModel):
    """Stage 1: a small canary, soaked behind a gate."""

    model_config = ConfigDict(
        json_schema_extra={
            CEL: [cel("!(has(self.count) && has(self.percent))", "set count or percent, not both")]
        }
    )

    count: int | None = Field(default=None, ge=1, description="Canary agents (default 1).")
    percent: int | None = Field(
        default=None, ge=1, le=100, description="Canary share of replicas, rounded up."
    )
    soak_seconds: float = Field(
        default=60, ge=0, description="Minimum time at this step before a verdict."
    )
    gate: GateSpec = Field(default_factory=GateSpec)


class GradualStage(KubeModel):
    """Stage 2: move agents a step at a time, with a gate between steps."""

    step: int = Field(default=1, ge=1, description="Agents moved per step.")
    interval_seconds: float = Field(
        default=30, ge=0, description="Minimum time per step before a verdict."
    )
    gate: GateSpec = Field(default_factory=GateSpec)


class FullStage(KubeModel):
    """Stage 3: move the rest, then decommission the legacy revision."""

    soak_seconds: float = Field(
        default=0, ge=0, description="Time on the new revision before completing."
    )


class PhasedPolicy(KubeModel):
    """The phased migration of a fleet to a new revision."""

    initial: InitialStage = Field(default_factory=InitialStage)
    gradual: GradualStage = Field(default_factory=GradualStage)
    full: FullStage = Field(default_factory=FullStage)
    max_surge: int = Field(default=1, ge=0, description="Pods above replicas while moving agents.")
    max_unavailable: int = Field(
        default=0, ge=0, description="Ready agents below replicas while moving."
    )
    capability_budget: int = Field(
        default=1,
        ge=0,
        description="Never fewer Ready agents than this per capability during a rollout.",
    )
    auto_rollback: bool = Field(default=True, description="Roll back to stable when a gate fails.")
    progress_deadline_seconds: float = Field(
        default=600, gt=0, description="A step stuck longer is Degraded."
    )
    paused: bool = Field(default=False, description="Hold the rollout where it is.")
    analysis: AnalysisSpec = Field(
        default_factory=AnalysisSpec, description="Gates on the quality of the canary's answers."
    )


class Measured(KubeModel):
    """The numbers a verdict was made on (shown in status, Events and history)."""

    tasks: int = 0
    success_rate: float | None = None
    error_rate: float | None = None
    p95_latency_ms: float | None = None
    stable_error_rate: float | None = None
    canary_share: float | None = Field(
        default=None, description="The canary's share of the fleet's finished tasks in this step."
    )
    tokens_per_task: float | None = Field(
        default=None, description="The canary's model tokens per successful task."
    )
    stable_tokens_per_task: float | None = None
    cost_per_task: float | None = Field(
        default=None, description="The canary's model cost per successful task."
    )
    stable_cost_per_task: float | None = None
    shadow_samples: int | None = Field(
        default=None, description="Live tasks the canary answered in shadow."
    )
    shadow_agreement: float | None = Field(
        default=None, description="Share of them answered as the stable revision did."
    )
    shadow_latency_ratio: float | None = Field(
        default=None, description="Canary time per copy / stable time for the same tasks."
    )
    shadow_cost_ratio: float | None = Field(
        default=None, description="Canary cost per copy / stable cost for the same tasks."
    )
    golden_cases: int | None = Field(default=None, description="Golden cases judged.")
    golden_pass_rate: float | None = Field(
        default=None, description="The canary's share of golden cases answered right."
    )
    stable_golden_pass_rate: float | None = Field(
        default=None, description="The stable revision's, on the same cases."
    )
    golden_failed: list[str] = Field(
        default_factory=list, max_length=10, description="Cases the canary got wrong (first 10)."
    )


class GateVerdict(KubeModel):
    """One gate evaluation."""

    result: GateResult
    reason: str
    measured: Measured
    at: dt.datetime


class HistoryEntry(KubeModel):
    """One thing that happened during a rollout."""

    at: dt.datetime
    stage: Stage
    step: int
    canary_agents: int
    reason: RolloutReason
    message: str = ""
    verdict: GateVerdict | None = None


class RevisionCounts(KubeModel):
    """Cumulative finished tasks of one revision, and their model usage, as counted in Redis."""

    completed: int = 0
    failed: int = 0
    rejected: int = 0
    tokens: int = 0
    cost: float = 0.0


class RolloutState(KubeModel):
    """The whole state of a rollout: resuming from it after a restart continues where it stopped."""

    phase: RolloutPhase
    stage: Stage = Stage.INITIAL
    step: int = 0
    stable_revision: str
    canary_revision: str
    canary_agents: int = Field(
        default=0, ge=0, description="Agents the current step puts on canary."
    )
    step_started_at: dt.datetime
    paused_at: dt.datetime | None = None
    baseline: dict[str, RevisionCounts] = Field(
        default_factory=dict,
        description="Counts per revision when the step began; gates use the difference.",
    )
    consecutive_failures: int = 0
    last_verdict: GateVerdict | None = None
    held: str | None = Field(
        default=None,
        description="Why stage 3 waits: live traffic uses a protocol major the canary lacks.",
    )
    history: list[HistoryEntry] = Field(default_factory=list)
    last_action: str | None = Field(
        default=None, description="The newfuse.io/rollout-action annotation value already acted on."
    )
    message: str = ""
