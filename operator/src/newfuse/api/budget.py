"""`spec.budget` and `status.budget`: what a fleet may spend on model calls in a UTC day.

Spend is what the agents report: the gateway's token counts, priced by spec.gateway.prices. A soft
limit is a warning (an Event and a metric); a hard limit refuses new tasks, in the same Redis step
that would have enqueued them, with an error naming the limit, until the day ends.
"""

from __future__ import annotations

from enum import StrEnum

from pydantic import Field

from newfuse.api.base import KubeModel


class BudgetSpec(KubeModel):
    """Daily (UTC) limits on the fleet's model spend; any limit may be left out."""

    soft_cost: float | None = Field(default=None, gt=0, description="Warn above this cost a day.")
    hard_cost: float | None = Field(
        default=None, gt=0, description="Refuse new tasks once this cost is spent today."
    )
    soft_tokens: int | None = Field(default=None, gt=0, description="Warn above these tokens.")
    hard_tokens: int | None = Field(
        default=None, gt=0, description="Refuse new tasks once these tokens are spent today."
    )


class BudgetState(StrEnum):
    """Where today's spend stands against the limits."""

    WITHIN = "Within"
    SOFT_EXCEEDED = "SoftExceeded"
    HARD_EXCEEDED = "HardExceeded"


class BudgetStatus(KubeModel):
    """Today's spend, as the agents reported it."""

    day: str = Field(description="The UTC day (YYYY-MM-DD, by Redis' clock).")
    cost: float = 0.0
    tokens: int = 0
    state: BudgetState = BudgetState.WITHIN
    message: str = ""
