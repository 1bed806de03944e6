"""The errors of the task client, each naming what went wrong and what to do about it."""

from __future__ import annotations


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
