"""What a client asks for when it submits a task, and what the submission did."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass
from typing import Any

from newfuse.wire.envelope import PROTOCOL_VERSION
from newfuse.wire.protocol import major_of
from newfuse.wire.tasks import Priority

_VERSION = re.compile(r"[0-9]+\.[0-9]+")


@dataclass(frozen=True)
class Submitted:
    """What a submission did."""

    task_id: str
    entry_id: str
    created: bool


@dataclass(frozen=True)
class TaskSpec:
    """One task to submit."""

    handler: str
    input: Any = None
    priority: Priority = Priority.NORMAL
    task_id: str | None = None
    max_attempts: int = 3
    # None: the fleet's default timeout (TaskPolicy.default_timeout_seconds).
    timeout_seconds: float | None = None
    # Past this instant (timezone-aware) the task gets a FAILED result, reason `deadline`.
    deadline: dt.datetime | None = None
    # Followed by the fleet API: agents note its start and end (TaskPayload.events).
    events: bool = False
    # The envelope's protocol version: agents that do not speak its major pass the task on.
    protocol_version: str = PROTOCOL_VERSION

    def __post_init__(self) -> None:
        if not _VERSION.fullmatch(self.protocol_version):
            raise ValueError(
                f"protocol_version {self.protocol_version!r} is not a major.minor version"
            )

    @property
    def major(self) -> str:
        """The protocol major, stamped as seen when the task is submitted."""
        return str(major_of(self.protocol_version))
