"""The cost gate's and the budgets' arithmetic, as tables; and the usage the agents count.

A canary whose answers cost three times as many tokens fails the gate; spend against spec.budget
is Within, SoftExceeded or HardExceeded with a message naming the limit; the agents' usage hash is
read totally (a field that is not a sane number is skipped).
"""

from __future__ import annotations

import datetime as dt
import re

import pytest

from newfuse.adapters.taskerrors import BudgetExceededError, budget_refusal
from newfuse.api.budget import BudgetSpec, BudgetState, BudgetStatus
from newfuse.api.rollout import GateResult, GateSpec, RevisionCounts
from newfuse.core.budget import budget_status, day_name, newly_exceeded, parse_usage
from newfuse.core.gates import RevisionStats, cost_increase, evaluate_gate, revision_stats
from newfuse.core.metrics import budget_line, gate_line
from newfuse.wire.usage import Price, cost_of
from newfuse_agent.usage import Meter

pytestmark = pytest.mark.unit

T0 = dt.datetime(2026, 12, 2, tzinfo=dt.UTC)
STABLE = RevisionStats(completed=100, tokens=10_000, cost=1.0)


@pytest.mark.parametrize(
    ("canary", "limit", "fails"),
    [
        (
            RevisionStats(completed=50, tokens=15_000),
            0.5,
            r"tokens per successful task 300 > stable 100 \+ 50% \(3.00x\)",
        ),
        (RevisionStats(completed=50, tokens=7_500), 0.5, None),  # 150: exactly the limit
        (RevisionStats(completed=50, tokens=7_600), 0.5, "tokens per successful task 152"),
        (RevisionStats(completed=50, tokens=15_000, cost=0.5), 0.5, None),  # cost wins: 0.01
        (
            RevisionStats(completed=50, tokens=100, cost=1.6),
            0.5,
            r"cost per successful task 0.032 > stable 0.01",
        ),
        (RevisionStats(completed=50, tokens=15_000), None, None),  # the gate is off
        (RevisionStats(completed=0, failed=5, tokens=15_000), 0.5, None),  # no success: no rate
        (RevisionStats(completed=50), 0.5, None),  # no usage reported
        # Failures' usage counts: 25 successes of 50 tasks double the cost per success.
        (RevisionStats(completed=25, failed=25, tokens=5_000), 0.5, "200 > stable 100"),
    ],
)
def test_the_cost_gate_compares_usage_per_successful_task(
    canary: RevisionStats, limit: float | None, fails: str | None
) -> None:
    found = cost_increase(limit, canary, STABLE)
    if fails is None:
        assert found is None
    else:
        assert found is not None
        assert re.search(fails, found), found


def test_without_stable_numbers_the_cost_gate_has_nothing_to_compare() -> None:
    assert cost_increase(0.5, RevisionStats(completed=5, tokens=9_000_000_000), None) is None
    assert cost_increase(0.5, RevisionStats(completed=5, tokens=500), RevisionStats()) is None


def test_a_triple_token_canary_fails_its_gate_with_the_numbers_in_the_verdict() -> None:
    canary = RevisionStats(completed=40, tokens=12_000)
    verdict = evaluate_gate(GateSpec(min_tasks=20), canary, STABLE, T0)
    assert verdict.result is GateResult.FAILED
    assert "3.00x" in verdict.reason
    assert (verdict.measured.tokens_per_task, verdict.measured.stable_tokens_per_task) == (
        300,
        100,
    )
    assert verdict.measured.error_rate == 0.0, "no errors: only the bill went up"
    fair = evaluate_gate(
        GateSpec(min_tasks=20), RevisionStats(completed=40, tokens=4_000), STABLE, T0
    )
    assert fair.result is GateResult.PASSED


def test_usage_joins_the_revision_stats_and_step_baselines_subtract_it() -> None:
    stats = revision_stats({"a": (10, 1, 0)}, {}, {"a": (500, 0.25), "b": (7, 0.0)})
    assert (stats["a"].tokens, stats["a"].cost, stats["b"].tokens) == (500, 0.25, 7)
    since = stats["a"].since(RevisionCounts(completed=4, tokens=200, cost=0.05))
    assert (since.completed, since.tokens) == (6, 300)
    assert since.cost == pytest.approx(0.2)


# -- budgets --------------------------------------------------------------------------------------

BUDGET = BudgetSpec(soft_cost=5, hard_cost=10, soft_tokens=1000, hard_tokens=5000)


@pytest.mark.parametrize(
    ("tokens", "cost", "state", "message"),
    [
        (0, 0.0, BudgetState.WITHIN, ""),
        (999, 4.99, BudgetState.WITHIN, ""),
        (
            1000,
            1.0,
            BudgetState.SOFT_EXCEEDED,
            "1,000 tokens >= spec.budget.softTokens 1,000 (a warning",
        ),
        (10, 5.0, BudgetState.SOFT_EXCEEDED, "cost 5 >= spec.budget.softCost 5"),
        (
            4999,
            10.0,
            BudgetState.HARD_EXCEEDED,
            "cost 10 >= spec.budget.hardCost 10: new tasks are refused",
        ),
        (5000, 0.0, BudgetState.HARD_EXCEEDED, "5,000 tokens >= spec.budget.hardTokens 5,000"),
        (6000, 11.0, BudgetState.HARD_EXCEEDED, "cost 11 >= spec.budget.hardCost 10; 6,000 tokens"),
    ],
)
def test_spend_against_the_budget(
    tokens: int, cost: float, state: BudgetState, message: str
) -> None:
    status = budget_status(BUDGET, 20424, tokens, cost)
    assert (status.day, status.state) == ("2025-12-02", state)
    assert message in status.message


def test_only_a_hard_limit_or_only_a_soft_one() -> None:
    assert budget_status(BudgetSpec(hard_tokens=10), 0, 10, 0).state is BudgetState.HARD_EXCEEDED
    assert budget_status(BudgetSpec(soft_cost=1), 0, 10**9, 0.5).state is BudgetState.WITHIN
    assert day_name(0) == "1970-01-01"


def _status(day: str, state: BudgetState) -> BudgetStatus:
    return BudgetStatus(day=day, state=state)


@pytest.mark.parametrize(
    ("before", "after", "announce"),
    [
        (None, _status("d1", BudgetState.WITHIN), False),
        (None, _status("d1", BudgetState.SOFT_EXCEEDED), True),
        (_status("d1", BudgetState.SOFT_EXCEEDED), _status("d1", BudgetState.SOFT_EXCEEDED), False),
        (_status("d1", BudgetState.SOFT_EXCEEDED), _status("d1", BudgetState.HARD_EXCEEDED), True),
        (_status("d1", BudgetState.HARD_EXCEEDED), _status("d1", BudgetState.SOFT_EXCEEDED), False),
        (_status("d1", BudgetState.HARD_EXCEEDED), _status("d2", BudgetState.SOFT_EXCEEDED), True),
    ],
)
def test_each_limit_is_announced_once_a_day(
    before: BudgetStatus | None, after: BudgetStatus, announce: bool
) -> None:
    assert newly_exceeded(before, after) is announce


def test_the_usage_hash_is_read_totally() -> None:
    raw = {
        "rev:abc:tokens": "300",
        "rev:abc:cost": "0.5",
        "rev:abc:tasks": "3",
        "day:7:tokens": "70",
        "day:7:cost": "1.25",
        "day:6:tokens": "999",
        "rev:bad:tokens": "lots",
        "rev:neg:cost": "-1",
        "rev:inf:cost": "inf",
        "junk": "1",
    }
    usage = parse_usage(raw, 7)
    assert usage.by_revision == {"abc": (300, 0.5)}
    assert (usage.tokens_today, usage.cost_today) == (70, 1.25)


# -- what the agents count ------------------------------------------------------------------------

PRICES = (
    Price(model="small", inputPerMillionTokens=1, outputPerMillionTokens=4),
    Price(model="*", inputPerMillionTokens=10),
)


@pytest.mark.parametrize(
    ("response", "tokens", "cost"),
    [
        (
            {"model": "small", "usage": {"prompt_tokens": 1000, "completion_tokens": 500}},
            1500,
            0.003,
        ),
        (
            {"usage": {"prompt_tokens": 1000, "completion_tokens": 0, "total_tokens": 1200}},
            1200,
            0.001,
        ),
        ({"model": "big", "usage": {"prompt_tokens": 100000}}, 100000, 1.0),  # the "*" price
        ({"usage": "lots"}, 0, 0.0),
        ({"usage": {"prompt_tokens": -5, "completion_tokens": True}}, 0, 0.0),
        ({}, 0, 0.0),
    ],
)
def test_a_call_is_metered_from_the_gateways_usage_fields(
    response: dict[str, object], tokens: int, cost: float
) -> None:
    meter = Meter()
    meter.add(response, PRICES, "small")
    assert meter.tokens == tokens
    assert meter.cost == pytest.approx(cost)
    assert cost_of([], "small", 10, 10) == 0


def test_a_refusal_over_budget_is_explained_naming_the_limits() -> None:
    refused = budget_refusal(Exception("NEWFUSE_BUDGET 10.5 10 1200 -"), "ns/fleet")
    assert isinstance(refused, BudgetExceededError)
    assert str(refused) == (
        "fleet ns/fleet is over its hard budget for today (UTC): cost 10.5 of "
        "spec.budget.hardCost 10 spent; new tasks are refused until 00:00 UTC or until the "
        "budget is raised"
    )
    tokens = budget_refusal(
        Exception("Command # 1 of pipeline: NEWFUSE_BUDGET 3 9 5000 5000',)"), "f"
    )
    assert tokens is not None
    assert (
        "over its hard budget for today (UTC): 5,000 tokens of spec.budget.hardTokens 5,000 "
        in str(tokens)
    )
    assert budget_refusal(Exception("WRONGTYPE"), "ns/f") is None


def test_the_live_page_gets_each_gates_numbers_and_the_spend_as_one_line() -> None:
    canary = RevisionStats(completed=40, tokens=12_000, cost=1.2)
    stable = RevisionStats(completed=100, tokens=10_000, cost=1.0)
    verdict = evaluate_gate(GateSpec(min_tasks=20), canary, stable, T0)
    golden = verdict.measured.model_copy(
        update={"golden_pass_rate": 0.8, "stable_golden_pass_rate": 1.0}
    )
    line = gate_line(verdict.model_copy(update={"measured": golden}))
    assert line.startswith("Failed: cost per successful task 0.03 > stable 0.01")
    assert "golden 80% (stable 100%); cost/task 0.03 (stable 0.01)" in line
    assert gate_line(None) == ""
    spent = budget_status(BUDGET, 20424, 1000, 2.5)
    assert budget_line(spent) == (
        "2025-12-02: cost 2.5, 1,000 tokens, SoftExceeded (1,000 tokens >= "
        "spec.budget.softTokens 1,000 (a warning: tasks still run))"
    )
