"""`spec.review`: which handlers' outputs wait for a person before they become results.

The user's face of `newfuse.wire.review.ReviewPolicy` (the API layer may not import the wire
layer, so the defaults are spelled here again; tests/unit/test_review.py holds the copies together).
Handlers that ask a question themselves (`context.request_input`) need no policy.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Final

from pydantic import Field

from newfuse.api.base import KubeModel

DEFAULT_TIMEOUT_SECONDS: Final = 86400.0
MAX_TIMEOUT_SECONDS: Final = 30 * 86400.0

HandlerName = Annotated[str, Field(min_length=1, max_length=64)]


class OnTimeout(StrEnum):
    """What a review nobody decided in time becomes."""

    APPROVE = "approve"
    REJECT = "reject"
    ESCALATE = "escalate"


class ReviewSpec(KubeModel):
    """Hold handlers' outputs for a person's approval (the task waits in input-required)."""

    handlers: list[HandlerName] = Field(
        min_length=1,
        max_length=64,
        description="Handlers whose outputs are reviewed (by handler name, as tasks name them).",
        json_schema_extra={"x-kubernetes-list-type": "set"},
    )
    sample_percent: float = Field(
        default=100.0,
        ge=0,
        le=100,
        description="Share of those tasks reviewed, chosen by task id (every attempt agrees).",
    )
    timeout_seconds: float = Field(
        default=DEFAULT_TIMEOUT_SECONDS,
        gt=0,
        le=MAX_TIMEOUT_SECONDS,
        description="How long a review waits for a decision (also for handlers' questions).",
    )
    on_timeout: OnTimeout = Field(
        default=OnTimeout.REJECT,
        description="approve, reject, or escalate: stay open, marked escalated, for one more "
        "timeout, then reject.",
    )
