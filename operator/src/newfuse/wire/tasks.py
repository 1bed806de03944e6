"""Tasks and results: the payloads of `task` and `result` envelopes, and the channel names.

Tasks travel on Redis Streams (one per priority) read by one consumer group per fleet, so a task is
never lost: it stays pending until an agent stores its result, and a dead agent's pending tasks are
reclaimed by the others. Results go to a stream too, and to an index keyed by task id.
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Any, Final

from pydantic import BaseModel, ConfigDict, Field


class Channel(StrEnum):
    """The three logical channels. Agents get each one's Redis key in the env var of that name."""

    COORDINATION = "AI_COORDINATION_CHANNEL"
    TASK = "AI_TASK_CHANNEL"
    RESULT = "AI_RESULT_CHANNEL"


class Priority(StrEnum):
    """Task priorities, highest first: an agent always drains higher ones before lower."""

    HIGH = "high"
    NORMAL = "normal"
    LOW = "low"


PRIORITY_ORDER: Final = (Priority.HIGH, Priority.NORMAL, Priority.LOW)
CONSUMER_GROUP: Final = "agents"


class TaskPayload(BaseModel):
    """What to do: a handler name and its input."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    task_id: str = Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9._:-]+$")
    handler: str = Field(min_length=1, max_length=64)
    input: Any = None
    priority: Priority = Priority.NORMAL
    max_attempts: int = Field(default=3, ge=1, le=20)
    timeout_seconds: float = Field(default=60.0, gt=0, le=3600)
    attempt: int = Field(default=1, ge=1)


class ResultStatus(StrEnum):
    """How a task ended."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"


class ResultPayload(BaseModel):
    """What came of a task, and who did it."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    task_id: str
    status: ResultStatus
    output: Any = None
    error: str | None = None
    agent_id: str
    revision: str | None = None
    attempts: int = 1
    latency_ms: float = 0.0
    finished_at: dt.datetime


class DeadLetter(BaseModel):
    """A message no agent will process, with why; `newfuse dlq` shows and requeues these."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    reason: str
    detail: str
    raw: str
    agent_id: str
    source_stream: str
    task_id: str | None = None
    attempts: int = 0
    at: dt.datetime
