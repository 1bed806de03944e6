"""A fleet's spend against spec.budget: the state, and the message the Event and status carry.

Pure: the day's spend comes in as the agents counted it (newfuse.wire.usage), the limits from the
spec. The hard limit itself is enforced in Redis, by the submission scripts; this only says so.
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Mapping
from dataclasses import dataclass, field

from newfuse.api.budget import BudgetSpec, BudgetState, BudgetStatus


def day_name(day: int) -> str:
    """A day number (days since the epoch, UTC) as YYYY-MM-DD."""
    return (dt.date(1970, 1, 1) + dt.timedelta(days=day)).isoformat()


def _reached(
    cost: float, tokens: int, limits: tuple[float | None, int | None], names: tuple[str, str]
) -> list[str]:
    cost_limit, token_limit = limits
    hits = []
    if cost_limit is not None and cost >= cost_limit:
        hits.append(f"cost {cost:g} >= spec.budget.{names[0]} {cost_limit:g}")
    if token_limit is not None and tokens >= token_limit:
        hits.append(f"{tokens:,} tokens >= spec.budget.{names[1]} {token_limit:,}")
    return hits


def budget_status(spec: BudgetSpec, day: int, tokens: int, cost: float) -> BudgetStatus:
    """Where ``day``'s spend stands: hard beats soft, and the message names the limits reached."""
    hard = _reached(cost, tokens, (spec.hard_cost, spec.hard_tokens), ("hardCost", "hardTokens"))
    soft = _reached(cost, tokens, (spec.soft_cost, spec.soft_tokens), ("softCost", "softTokens"))
    state, message = BudgetState.WITHIN, ""
    if hard:
        state = BudgetState.HARD_EXCEEDED
        message = f"{'; '.join(hard)}: new tasks are refused until 00:00 UTC"
    elif soft:
        state = BudgetState.SOFT_EXCEEDED
        message = f"{'; '.join(soft)} (a warning: tasks still run)"
    return BudgetStatus(
        day=day_name(day), cost=round(cost, 6), tokens=tokens, state=state, message=message
    )


def newly_exceeded(before: BudgetStatus | None, after: BudgetStatus | None) -> bool:
    """Whether ``after`` reached a limit ``before`` (the last status) had not reached that day."""
    if after is None or after.state is BudgetState.WITHIN:
        return False
    if before is None or before.day != after.day:
        return True
    order = list(BudgetState)
    return order.index(after.state) > order.index(before.state)


@dataclass(frozen=True)
class Usage:
    """The usage hash, read: per revision (tokens, cost) for the cost gate, and today's spend."""

    day: int
    by_revision: dict[str, tuple[int, float]] = field(default_factory=dict)
    tokens_today: int = 0
    cost_today: float = 0.0


def _number(raw: str) -> float | None:
    try:
        value = float(raw)
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def parse_usage(raw: Mapping[str, str], day: int) -> Usage:
    """Read the agents' usage hash totally: a field that is not a sane count is skipped."""
    revisions: dict[str, list[float]] = {}
    today = [0.0, 0.0]
    for name, value in raw.items():
        number = _number(value)
        kind, _, rest = name.partition(":")
        key, _, unit = rest.rpartition(":")
        if number is None or unit not in ("tokens", "cost"):
            continue
        index = 0 if unit == "tokens" else 1
        if kind == "rev" and key:
            revisions.setdefault(key, [0.0, 0.0])[index] = number
        elif kind == "day" and key == str(day):
            today[index] = number
    return Usage(
        day,
        {rev: (int(t), c) for rev, (t, c) in revisions.items()},
        int(today[0]),
        today[1],
    )
