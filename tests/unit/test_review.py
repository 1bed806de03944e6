"""Human review's pure rules, table-tested: sampling, what a reviewer may decide, timeouts, resume.

Also the names that cross processes: the spec's defaults and the agents' policy agree, the Lua
scripts write the event and counter names the readers expect, and every key is a fleet key.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest

from newfuse.api import review as api_review
from newfuse.core import review as rules
from newfuse.core.pods import review_policy
from newfuse.fleetapi.reviewroutes import STREAM_ID, decision_of
from newfuse.wire import review as wire
from newfuse.wire import reviewscripts
from newfuse.wire.keys import FleetKeys
from newfuse.wire.review import (
    OnTimeout,
    ReviewDecision,
    ReviewKind,
    ReviewPolicy,
    ReviewRequest,
    ReviewState,
    Verdict,
)
from newfuse.wire.tasks import TaskEvent
from newfuse_agent.contract import Answers, InputRequired

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)
BY_ALICE = "rejected by alice: "


def _request(kind: ReviewKind = ReviewKind.OUTPUT, **fields: Any) -> ReviewRequest:
    values: dict[str, Any] = {
        "id": "t1.output.0", "task_id": "t1", "kind": kind, "handler": "draft",
        "agent_id": "a-0", "created_at": NOW, "timeout_seconds": 60,
        "on_timeout": OnTimeout.REJECT, "output": "text",
    }  # fmt: skip
    return ReviewRequest(**{**values, **fields})


def _decision(verdict: Verdict, **fields: Any) -> ReviewDecision:
    return ReviewDecision(verdict=verdict, reviewer="alice", decided_at=NOW, **fields)


def test_sampling_is_by_task_id_and_close_to_the_percentage() -> None:
    policy = ReviewPolicy(handlers=("draft",), sample_percent=30)
    held = [policy.holds("draft", f"task-{i}") for i in range(4000)]
    assert 0.27 < sum(held) / len(held) < 0.33
    assert held == [policy.holds("draft", f"task-{i}") for i in range(4000)], "deterministic"
    assert not policy.holds("other", "task-1")
    assert not ReviewPolicy(handlers=("draft",), sample_percent=0).holds("draft", "t")
    assert all(ReviewPolicy(handlers=("draft",)).holds("draft", f"t{i}") for i in range(100))


def test_the_specs_defaults_are_the_agents() -> None:
    spec = api_review.ReviewSpec(handlers=["draft"])
    assert review_policy(spec) == ReviewPolicy(handlers=("draft",))
    assert {e.value for e in api_review.OnTimeout} == {e.value for e in OnTimeout}
    assert api_review.DEFAULT_TIMEOUT_SECONDS == wire.DEFAULT_REVIEW_TIMEOUT_SECONDS
    assert spec.to_api() == {
        "handlers": ["draft"], "samplePercent": 100.0, "timeoutSeconds": 86400.0,
        "onTimeout": "reject",
    }  # fmt: skip


SCHEMA = {"type": "object", "required": ["ok"], "properties": {"ok": {"type": "boolean"}}}


@pytest.mark.parametrize(
    ("kind", "state", "decision", "refusal"),
    [
        (ReviewKind.OUTPUT, ReviewState.APPROVED, _decision(Verdict.APPROVE), "already decided"),
        (ReviewKind.OUTPUT, ReviewState.REJECTED, _decision(Verdict.APPROVE), "already decided"),
        (ReviewKind.OUTPUT, ReviewState.PENDING, _decision(Verdict.REJECT), "needs a reason"),
        (ReviewKind.OUTPUT, ReviewState.PENDING, _decision(Verdict.REJECT, comment=" "), "reason"),
        (ReviewKind.OUTPUT, ReviewState.PENDING, _decision(Verdict.ANSWER, answer=1), "not a q"),
        (ReviewKind.INPUT, ReviewState.PENDING, _decision(Verdict.APPROVE, edited=True), "answer"),
        (ReviewKind.INPUT, ReviewState.PENDING, _decision(Verdict.ANSWER, answer={}), "'ok' is a"),
        (ReviewKind.INPUT, ReviewState.PENDING, _decision(Verdict.ANSWER, answer={"ok": 1}), "ok:"),
        (ReviewKind.OUTPUT, ReviewState.PENDING, _decision(Verdict.APPROVE), None),
        (ReviewKind.OUTPUT, ReviewState.ESCALATED, _decision(Verdict.APPROVE, edited=True), None),
        (ReviewKind.OUTPUT, ReviewState.PENDING, _decision(Verdict.REJECT, comment="no"), None),
        (
            ReviewKind.INPUT,
            ReviewState.PENDING,
            _decision(Verdict.ANSWER, answer={"ok": 1 > 0}),
            None,
        ),
        (ReviewKind.INPUT, ReviewState.PENDING, _decision(Verdict.APPROVE), None),
    ],
)
def test_what_a_reviewer_may_decide(
    kind: ReviewKind, state: ReviewState, decision: ReviewDecision, refusal: str | None
) -> None:
    request = _request(kind, answer_schema=SCHEMA if kind is ReviewKind.INPUT else None)
    if refusal is None:
        rules.check(request, state, decision)
        return
    with pytest.raises(rules.ReviewRefusedError, match=refusal):
        rules.check(request, state, decision)


def test_only_late_decisions_are_conflicts() -> None:
    with pytest.raises(rules.ReviewConflictError):
        rules.check(_request(), ReviewState.ANSWERED, _decision(Verdict.APPROVE))
    with pytest.raises(rules.ReviewRefusedError) as refused:
        rules.check(_request(), ReviewState.PENDING, _decision(Verdict.REJECT))
    assert not isinstance(refused.value, rules.ReviewConflictError)


def test_an_invalid_schema_from_a_handler_is_named() -> None:
    request = _request(ReviewKind.INPUT, answer_schema={"type": "no-such-type"})
    with pytest.raises(rules.ReviewRefusedError, match="schema is invalid"):
        rules.check(request, ReviewState.PENDING, _decision(Verdict.ANSWER, answer=1))


@pytest.mark.parametrize(
    ("on_timeout", "state", "verdict"),
    [
        (OnTimeout.APPROVE, ReviewState.PENDING, Verdict.APPROVE),
        (OnTimeout.REJECT, ReviewState.PENDING, Verdict.REJECT),
        (OnTimeout.ESCALATE, ReviewState.PENDING, None),
        (OnTimeout.ESCALATE, ReviewState.ESCALATED, Verdict.REJECT),
    ],
)
def test_what_the_timeout_decides(
    on_timeout: OnTimeout, state: ReviewState, verdict: Verdict | None
) -> None:
    request = _request(on_timeout=on_timeout)
    assert rules.on_timeout(request, state) is verdict
    decision = rules.timeout_decision(request, verdict, NOW)
    assert decision.timed_out
    assert decision.reviewer == wire.TIMEOUT_REVIEWER
    assert decision.verdict is (verdict or Verdict.REJECT)
    assert "no decision within 60s" in (decision.comment or "")


@pytest.mark.parametrize(
    ("kind", "decision", "outcome"),
    [
        (ReviewKind.OUTPUT, _decision(Verdict.APPROVE), rules.Store("text")),
        (ReviewKind.OUTPUT, _decision(Verdict.APPROVE, answer="v", edited=True), rules.Store("v")),
        (ReviewKind.OUTPUT, _decision(Verdict.REJECT, comment="x"), rules.Reject(BY_ALICE + "x")),
        (ReviewKind.INPUT, _decision(Verdict.ANSWER, answer=7), rules.Resume(7)),
        (ReviewKind.INPUT, _decision(Verdict.APPROVE), rules.Resume(None)),
        (ReviewKind.INPUT, _decision(Verdict.REJECT, comment="no"), rules.Reject(BY_ALICE + "no")),
        (
            ReviewKind.INPUT,
            ReviewDecision(verdict=Verdict.REJECT, reviewer="system:timeout", decided_at=NOW,
                           timed_out=True),
            rules.Reject("the review timed out"),
        ),
    ],
)  # fmt: skip
def test_what_a_decided_review_does_to_its_task(
    kind: ReviewKind, decision: ReviewDecision, outcome: object
) -> None:
    assert rules.resumption(_request(kind), decision) == outcome


def test_answers_are_handed_out_in_the_order_asked() -> None:
    answers = Answers(("tea", 300))
    assert answers.next("topic?", None) == "tea"
    assert answers.next("length?", {"type": "integer"}) == 300
    with pytest.raises(InputRequired) as asked:
        answers.next("publish?", {"type": "boolean"})
    assert (asked.value.question, asked.value.step) == ("publish?", 2)
    assert not isinstance(asked.value, Exception), "a handler's `except Exception` cannot eat it"


def test_review_ids_are_per_task_kind_and_step() -> None:
    ids = {wire.review_id("t1", kind, step) for kind in ReviewKind for step in (0, 1)}
    assert len(ids) == 4


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ([], "JSON object"),
        ({}, "verdict: one of approve, reject, answer"),
        ({"verdict": "maybe"}, "verdict"),
        ({"verdict": "reject", "comment": "x" * 5000}, "comment"),
    ],
)
def test_a_gateway_decision_body_names_the_field_that_is_wrong(body: Any, error: str) -> None:
    with pytest.raises(ValueError, match=error):
        decision_of(body, "bob", NOW)


def test_a_gateway_decision_records_the_tokens_user_and_an_edit() -> None:
    decision = decision_of({"verdict": "approve", "output": "v2", "reviewer": "eve"}, "bob", NOW)
    assert (decision.reviewer, decision.answer, decision.edited) == ("bob", "v2", True)


def test_the_scripts_write_the_names_their_readers_use() -> None:
    assert f"'{TaskEvent.INPUT_REQUIRED.value}'" in reviewscripts.PARK_LUA
    assert f"'{reviewscripts.COUNTER_REVIEWS_REQUESTED}'" in reviewscripts.PARK_LUA
    for name in (reviewscripts.COUNTER_REVIEWS_ESCALATED, reviewscripts.COUNTER_REVIEWS_TIMED_OUT):
        assert f"'{name}'" in reviewscripts.DECIDE_LUA
    assert f"'{reviewscripts.COUNTER_REVIEWS_PREFIX}'" in reviewscripts.DECIDE_LUA
    for state in (ReviewState.PENDING, ReviewState.ESCALATED):
        assert f"'{state.value}'" in reviewscripts.PARK_LUA + reviewscripts.DECIDE_LUA
    for reply in (reviewscripts.EXPIRED, reviewscripts.NOT_DUE, reviewscripts.UNKNOWN):
        assert f"'{reply}'" in reviewscripts.DECIDE_LUA
    for reply in (
        reviewscripts.PARKED,
        reviewscripts.LOST,
        reviewscripts.DONE,
        reviewscripts.DECIDED,
    ):
        assert f"'{reply}'" in reviewscripts.PARK_LUA


def test_review_keys_are_fleet_keys_and_expire_with_results() -> None:
    keys = FleetKeys("ns", "f")
    mine = {keys.reviews, keys.review_states, keys.review_decisions, keys.review_resume}
    assert mine <= set(keys.expiring_hashes)
    assert mine | {keys.review_due, keys.review_log} <= set(keys.all_keys())
    assert all(key.startswith(keys.prefix) for key in mine)


@pytest.mark.parametrize(
    ("since", "valid"),
    [("1764650000000-0", True), ("(1764650000000-1", True), ("12", True), ("abc", False),
     ("1-2-3", False), ("+", False)],
)  # fmt: skip
def test_the_feedback_cursor_must_be_a_log_entry_id(since: str, valid: bool) -> None:
    assert bool(STREAM_ID.match(since)) is valid
