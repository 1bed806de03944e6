"""The agent's Prometheus metrics (`newfuse_agent_*`), served on /metrics."""

from __future__ import annotations

from enum import StrEnum

from prometheus_client import Counter, Gauge, Histogram


class TaskOutcome(StrEnum):
    """How one delivery of a task ended on this agent."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRIED = "retried"
    DEAD_LETTERED = "dead_lettered"
    HANDED_BACK = "handed_back"
    DUPLICATE = "duplicate"


TASKS = Counter("newfuse_agent_tasks_total", "Task deliveries by outcome.", ["outcome"])
TASK_SECONDS = Histogram(
    "newfuse_agent_task_duration_seconds",
    "Handler time per task.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
)
REJECTED = Counter(
    "newfuse_agent_messages_rejected_total", "Messages refused, by reason.", ["reason"]
)
RECLAIMED = Counter("newfuse_agent_tasks_reclaimed_total", "Tasks taken over from a dead consumer.")
INFLIGHT = Gauge("newfuse_agent_tasks_inflight", "Tasks being handled now.")
REDIS_UP = Gauge("newfuse_agent_redis_up", "1 if the last Redis call succeeded.")
DRAINING = Gauge("newfuse_agent_draining", "1 while the agent drains.")
