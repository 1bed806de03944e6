"""What one task's model calls used: counted as they return, recorded once the handler ends.

The gateway client adds each call's `usage` (priced by the fleet's price table) to the meter of the
task running it; a ContextVar finds that task, since every delivery runs in its own asyncio task and
handlers never pass anything along. The processor records the total in the fleet's usage hash
(newfuse.wire.usage), per revision for the cost gate and per day for budgets, whether the task
succeeded or not: a failed call still cost money.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

import redis.asyncio as aioredis

from newfuse.wire.keys import FleetKeys
from newfuse.wire.usage import USAGE_LUA, Price, cost_of
from newfuse_agent import metrics


@dataclass
class Meter:
    """Tokens and cost of one task's model calls so far."""

    tokens: int = 0
    cost: float = 0.0

    def add(
        self, response: Mapping[str, Any], prices: tuple[Price, ...], model: str | None
    ) -> None:
        """Count one chat-completions response (its `usage` and `model` fields, if sane)."""
        usage = response.get("usage")
        if not isinstance(usage, Mapping):
            return
        prompt, completion = (
            _count(usage.get("prompt_tokens")),
            _count(usage.get("completion_tokens")),
        )
        total = _count(usage.get("total_tokens")) or prompt + completion
        named = response.get("model")
        self.tokens += total
        self.cost += cost_of(
            list(prices), named if isinstance(named, str) else model, prompt, completion
        )


def _count(value: Any) -> int:
    # The gateway is outside our control: anything but a sane count is no count.
    return value if isinstance(value, int) and not isinstance(value, bool) and value > 0 else 0


CURRENT: ContextVar[Meter | None] = ContextVar("newfuse_task_meter", default=None)


@contextlib.contextmanager
def metering() -> Iterator[Meter]:
    """Meter the model calls made inside this block (by this asyncio task)."""
    meter = Meter()
    token = CURRENT.set(meter)
    try:
        yield meter
    finally:
        CURRENT.reset(token)


def count(response: Mapping[str, Any], prices: tuple[Price, ...], model: str | None) -> None:
    """Add a call's usage to the current task's meter (none outside a task: not counted)."""
    meter = CURRENT.get()
    if meter is not None:
        meter.add(response, prices, model)


class UsageLedger:
    """Records finished tasks' usage in the fleet's usage hash."""

    def __init__(self, client: aioredis.Redis, keys: FleetKeys, revision: str) -> None:
        """Record for ``revision`` of the fleet ``keys`` names."""
        self.keys, self.revision = keys, revision
        self._record = client.register_script(USAGE_LUA)

    async def record(self, meter: Meter) -> None:
        """Add one task's tokens and cost (nothing if it made no metered call)."""
        if meter.tokens <= 0 and meter.cost <= 0:
            return
        await self._record(
            keys=[self.keys.usage], args=[self.revision, meter.tokens, f"{meter.cost:.9f}"]
        )
        metrics.TOKENS.inc(meter.tokens)
        metrics.COST.inc(meter.cost)
