"""`spec.rollout.analysis`: gates on what a revision answers, not only on whether it errs.

A new prompt or model that answers wrongly raises no error, so the success-rate gate passes it.
Golden tasks are cases with known good answers, kept in a ConfigMap the team edits like any other
config: at each gate they run on the canary and on the stable revision, and the gate judges the
canary's pass rate and its drop from stable's (newfuse.core.golden).

Shadow tasks (ShadowSpec) compare the canary with stable on live work instead.

The cases' format is GoldenCase, a list of them in YAML or JSON under the ConfigMap's key.
"""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from newfuse.api.base import KubeModel

SCORERS = ("exact", "contains", "regex", "jsonSchema", "llmJudge")
_FIELDS = {"jsonSchema": "json_schema", "llmJudge": "llm_judge"}


class Expectation(KubeModel):
    """How one case's output is judged: exactly one scorer."""

    exact: Any = Field(default=None, description="The output must equal this (JSON values).")
    contains: str | None = Field(
        default=None, description="The output (as text, or as JSON text) must contain this."
    )
    regex: str | None = Field(
        default=None, description="A Python regular expression the output text must match."
    )
    json_schema: dict[str, Any] | None = Field(
        default=None, description="A JSON Schema the output must validate against."
    )
    llm_judge: str | None = Field(
        default=None,
        min_length=1,
        max_length=4000,
        description="Criteria a model judges the output by: the stable revision's agents ask "
        "their gateway (spec.gateway), so a canary's new model never grades itself.",
    )

    @model_validator(mode="after")
    def _one_scorer(self) -> Expectation:
        chosen = [n for n in SCORERS if self._set(n)]
        if len(chosen) != 1:
            raise ValueError(f"set exactly one of {', '.join(SCORERS)} (got {chosen or 'none'})")
        return self

    def _set(self, alias: str) -> bool:
        name = _FIELDS.get(alias, alias)
        chosen = name in self.model_fields_set
        return chosen and (name == "exact" or getattr(self, name) is not None)

    @property
    def scorer(self) -> str:
        """The scorer's name, as gate messages show it."""
        for alias in SCORERS:
            if self._set(alias):
                return alias
        raise AssertionError("validated to have one scorer")


class GoldenCase(KubeModel):
    """One golden task: a handler, its input, and what a right answer looks like."""

    name: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._-]+$")
    handler: str = Field(min_length=1, max_length=64)
    input: Any = None
    expect: Expectation


class GoldenTasksSpec(KubeModel):
    """Golden tasks from a ConfigMap, run on canary and stable at every stage-1 and -2 gate."""

    config_map: str = Field(
        min_length=1, max_length=253, description="ConfigMap in the fleet's namespace."
    )
    key: str = Field(
        default="cases.yaml", min_length=1, description="Its key holding the list of cases."
    )
    min_pass_rate: float = Field(
        default=0.9, ge=0, le=1, description="Fail when the canary passes fewer cases than this."
    )
    max_pass_rate_drop: float | None = Field(
        default=0.05,
        ge=0,
        le=1,
        description="Fail when the canary's pass rate is below stable's by more than this.",
    )


class ShadowSpec(KubeModel):
    """Live tasks copied to the canary; its answers are compared, never returned to callers."""

    percent: float = Field(
        default=10, gt=0, le=100, description="Share of the stable revision's tasks copied."
    )
    max_samples: int = Field(default=100, ge=1, le=1000, description="Copies per gate, at most.")
    min_samples: int = Field(
        default=20, ge=1, description="Copies the canary must answer before a verdict."
    )
    min_agreement: float = Field(
        default=0.9, ge=0, le=1, description="Fail when fewer answers equal stable's (JSON)."
    )
    max_latency_increase: float | None = Field(
        default=None, ge=0, description="Fail when the canary is slower by more than this share."
    )
    max_cost_increase: float | None = Field(
        default=None, ge=0, description="Fail when a copy costs more by more than this share."
    )
    judge: str | None = Field(
        default=None,
        min_length=1,
        max_length=4000,
        description="Criteria for agreement, graded by the stable revision's model (like "
        "llmJudge), e.g. 'Gives the same facts as the reference answer'. Unset: the two answers "
        "must be equal as JSON.",
    )


class ProtocolGateSpec(KubeModel):
    """Before stage 3, the canary must speak every protocol major live traffic still uses."""

    quiet_seconds: int = Field(
        default=300,
        ge=0,
        le=7 * 86400,
        description="A major counts as in use until no task of it was submitted or taken for "
        "this long (and no task waiting in the backlog can be older than that sighting).",
    )


class AnalysisSpec(KubeModel):
    """Gates on the quality of a revision's answers, added to every stage-1 and -2 gate."""

    golden_tasks: GoldenTasksSpec | None = Field(
        default=None, description="Cases with known answers, run on canary and stable."
    )
    shadow: ShadowSpec | None = Field(
        default=None, description="Live tasks copied to the canary and compared with stable."
    )
    protocol: ProtocolGateSpec = Field(
        default_factory=ProtocolGateSpec,
        description="The protocol-version gate before stage 3 (always on: it holds only while "
        "traffic uses a major the canary does not speak).",
    )
