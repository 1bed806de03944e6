"""The errors of the task client, each naming what went wrong and what to do about it."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

from redis.exceptions import ResponseError

from newfuse.wire.keys import FleetKeys
from newfuse.wire.usage import BUDGET_ERROR


class FleetNotFoundError(LookupError):
    """No fleet of that name has state in Redis (never created, or the operator is not running)."""


class PayloadTooLargeError(ValueError):
    """A task's encoded envelope is over the size limit; nothing of it was written to Redis."""

    def __init__(self, task_id: str, size: int, limit: int) -> None:
        """Refuse task ``task_id`` whose envelope is ``size`` bytes, over ``limit``."""
        super().__init__(
            f"task {task_id}: the encoded task is {size:,} bytes, over the limit of {limit:,} "
            f"bytes ({size / 1048576:.2f} MiB > {limit / 1048576:.2f} MiB); send a reference "
            "to the data (a URL, an object key) instead of the data itself"
        )
        self.task_id, self.size, self.limit = task_id, size, limit


class MalformedResultError(ValueError):
    """The result index holds, for this task, something that is not a valid result envelope."""

    def __init__(self, task_id: str, reason: str, detail: str) -> None:
        """Name the task and why its stored result is unreadable."""
        super().__init__(f"the stored result of task {task_id} is unreadable: {reason}: {detail}")
        self.task_id, self.reason, self.detail = task_id, reason, detail


class RequeueSkippedError(ValueError):
    """A dead letter that must not be requeued: a security refusal, or a task that succeeded."""

    def __init__(self, entry_id: str, reason: str) -> None:
        """Skip dead letter ``entry_id`` for ``reason``."""
        super().__init__(f"{entry_id}: {reason}")
        self.entry_id, self.reason = entry_id, reason


class BudgetExceededError(RuntimeError):
    """The fleet spent its hard budget for the day (spec.budget): new tasks are refused."""

    def __init__(self, fleet: str, spent: list[str]) -> None:
        """Refuse a task of ``fleet``, which has ``spent`` (each naming its limit) today."""
        super().__init__(
            f"fleet {fleet} is over its hard budget for today (UTC): {'; '.join(spent)} spent; "
            "new tasks are refused until 00:00 UTC or until the budget is raised"
        )
        self.fleet = fleet


_NUMBER = r"([0-9.eE+-]+|-)"
_REFUSAL = re.compile(rf"{BUDGET_ERROR} {_NUMBER} {_NUMBER} {_NUMBER} {_NUMBER}")


def budget_refusal(exc: Exception, fleet: str) -> BudgetExceededError | None:
    """The budget refusal ``exc`` carries (a Redis error reply, maybe of a pipeline), if any."""
    found = _REFUSAL.search(str(exc))
    if found is None:
        return None
    cost, hard_cost, tokens, hard_tokens = found.groups()
    spent = []
    if hard_cost != "-" and float(cost) >= float(hard_cost):
        spent.append(f"cost {float(cost):g} of spec.budget.hardCost {float(hard_cost):g}")
    if hard_tokens != "-" and float(tokens) >= float(hard_tokens):
        spent.append(
            f"{int(float(tokens)):,} tokens of spec.budget.hardTokens {int(float(hard_tokens)):,}"
        )
    return BudgetExceededError(fleet, spent)


@contextlib.contextmanager
def refusing_over_budget(keys: FleetKeys) -> Iterator[None]:
    """Raise a Redis refusal over the fleet's hard budget as the BudgetExceededError it is."""
    try:
        yield
    except ResponseError as exc:
        if (refused := budget_refusal(exc, f"{keys.namespace}/{keys.fleet}")) is not None:
            raise refused from None
        raise
