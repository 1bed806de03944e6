"""The llmJudge scorer's pure parts: the case, the judge's prompt and reply, the score, the hold."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Any

import pytest

from factories import analyzing, fleet
from fakes import FakeKube, FakeRedis
from newfuse.api.analysis import ShadowSpec
from newfuse.api.v1alpha1 import NewFuseAgent
from newfuse.core.golden import GoldenCasesError, golden_run, parse_cases, passes, score
from newfuse.core.shadow import score as shadow_score
from newfuse.core.shadow import shadow_config
from newfuse.runtime.golden import GoldenDriver, ShadowDriver
from newfuse.wire.golden import GoldenOutput
from newfuse.wire.shadow import ShadowCase
from newfuse_agent.judge import SYSTEM, prompt, verdict

pytestmark = pytest.mark.unit

CASES = parse_cases(
    """
- name: apology
  handler: chat
  input: {order: 7}
  expect: {llmJudge: "Apologises, names order 7."}
- {name: word, handler: echo, input: word, expect: {exact: word}}
""",
    "cm",
)
STATE = analyzing(dt.datetime(2026, 12, 2, tzinfo=dt.UTC))


def test_an_llm_judge_case_is_one_scorer_among_the_others() -> None:
    assert CASES[0].expect.scorer == "llmJudge"
    with pytest.raises(GoldenCasesError, match=r"set exactly one of .*llmJudge"):
        parse_cases("[{name: a, handler: h, expect: {llmJudge: x, contains: y}}]", "cm")
    with pytest.raises(GoldenCasesError, match=r"\[0\]\.expect\.llmJudge"):
        parse_cases("[{name: a, handler: h, expect: {llmJudge: ''}}]", "cm")
    with pytest.raises(ValueError, match="graded by a model"):
        passes(CASES[0].expect, "anything")


def test_the_run_carries_the_criteria_and_names_stable_as_the_judge() -> None:
    run = golden_run(STATE, CASES)
    assert (run.judge, run.revisions) == ("old", ["new", "old"])
    assert [c.criteria for c in run.cases] == ["Apologises, names order 7.", None]


@pytest.mark.parametrize(
    ("reply", "right"),
    [
        ("PASS", True),
        ("pass: it apologises", True),
        ("**FAIL** - no apology", False),
        ("  Fail. It shouts.", False),
        ("PASSABLE, I suppose", None),
        ("I think it passes", None),
        ("", None),
    ],
)
def test_the_judges_reply_is_a_grade_only_when_it_starts_with_pass_or_fail(
    reply: str, right: bool | None
) -> None:
    assert verdict(reply) is right


def test_the_prompt_gives_criteria_input_and_answer() -> None:
    system, user = prompt("Apologises.", '{"order": 7}', '"sorry"')
    assert system == {"role": "system", "content": SYSTEM}
    assert user["content"].endswith('Task input (JSON):\n{"order": 7}\n\nAnswer (JSON):\n"sorry"')


@pytest.mark.parametrize(
    ("outputs", "passed", "failed", "pending"),
    [
        ({}, 0, 0, 2),
        ({"new/apology": GoldenOutput(ok=True, output="sorry")}, 0, 0, 2),  # not graded yet
        (
            {
                "new/apology": GoldenOutput(ok=True, output="sorry"),
                "judge:new/apology": GoldenOutput(ok=True, output="PASS"),
                "new/word": GoldenOutput(ok=True, output="word"),
            },
            2,
            0,
            0,
        ),
        (
            {
                "new/apology": GoldenOutput(ok=True, output="no"),
                "judge:new/apology": GoldenOutput(ok=False, output="FAIL"),
            },
            0,
            1,
            1,
        ),
        ({"new/apology": GoldenOutput(ok=False, error="boom")}, 0, 1, 1),  # raised: wrong, ungraded
        ({"judge:old/apology": GoldenOutput(ok=True)}, 0, 0, 2),  # another revision's grade
    ],
)
def test_an_llm_judge_case_scores_by_its_grade(
    outputs: dict[str, GoldenOutput], passed: int, failed: int, pending: int
) -> None:
    seen = score(CASES, outputs, "new")
    assert (seen.passed, seen.failed, seen.pending) == (passed, failed, pending)


def _at_a_gate(**spec: Any) -> NewFuseAgent:
    rollout = {"strategy": "Phased", "analysis": {"goldenTasks": {"configMap": "golden"}}}
    plain = fleet(rollout=rollout, **spec)
    status = plain.status.model_copy(update={"rollout": STATE})
    return plain.model_copy(update={"status": status})


def test_llm_judge_cases_without_a_gateway_hold_the_gate_saying_why() -> None:
    kube, redis = FakeKube(), FakeRedis()
    case = "[{name: a, handler: chat, expect: {llmJudge: Apologises.}}]"
    kube.config_maps[("ns", "golden")] = {"cases.yaml": case}
    seen = asyncio.run(GoldenDriver(kube, redis).observe(_at_a_gate()))
    assert seen is not None
    assert seen.problem is not None
    assert "llmJudge cases need spec.gateway" in seen.problem
    gateway = {"endpoint": "http://llm:8080/v1"}
    published = asyncio.run(GoldenDriver(kube, redis).observe(_at_a_gate(gateway=gateway)))
    assert published is not None
    assert published.problem is None


SHADOW_CASES = {"t1": ShadowCase(handler="chat", output="yes"), "t2": ShadowCase(handler="chat")}


@pytest.mark.parametrize(
    ("outputs", "samples", "agreed"),
    [
        ({"t1": GoldenOutput(ok=True, output="YES")}, 0, 0),  # not graded yet: not a sample
        (
            {"t1": GoldenOutput(ok=True, output="YES"), "judge:t1": GoldenOutput(ok=True)},
            1,
            1,  # the model says it agrees, though the JSON differs
        ),
        (
            {"t1": GoldenOutput(ok=True, output="yes"), "judge:t1": GoldenOutput(ok=False)},
            1,
            0,  # the model says no, though the JSON is equal
        ),
        ({"t2": GoldenOutput(ok=False, error="boom")}, 1, 0),  # raised: a disagreement, ungraded
    ],
)
def test_a_judged_shadow_gate_counts_the_stable_models_grades(
    outputs: dict[str, GoldenOutput], samples: int, agreed: int
) -> None:
    seen = shadow_score(SHADOW_CASES, outputs, judged=True)
    assert (seen.samples, seen.agreed) == (samples, agreed)


def test_without_criteria_shadow_agreement_stays_json_equality() -> None:
    outputs = {"t1": GoldenOutput(ok=True, output="YES"), "judge:t1": GoldenOutput(ok=True)}
    seen = shadow_score(SHADOW_CASES, outputs)
    assert (seen.samples, seen.agreed) == (1, 0)
    spec = ShadowSpec(judge="Same facts.")
    assert shadow_config(STATE, spec).judge == "Same facts."
    assert shadow_config(STATE, ShadowSpec()).judge is None


def test_a_judged_shadow_gate_without_a_gateway_holds_saying_why() -> None:
    judged = {"strategy": "Phased", "analysis": {"shadow": {"judge": "Same facts."}}}
    plain = fleet(rollout=judged)
    at_gate = plain.model_copy(
        update={"status": plain.status.model_copy(update={"rollout": STATE})}
    )
    seen = asyncio.run(ShadowDriver(FakeRedis()).observe(at_gate))
    assert seen is not None
    assert seen.problem == (
        "copies graded by shadow.judge need spec.gateway (the stable revision's agents ask its "
        "model)"
    )
