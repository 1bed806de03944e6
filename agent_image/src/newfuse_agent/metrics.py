"""The agent's Prometheus metrics (`newfuse_agent_*`), served on /metrics."""

from __future__ import annotations

import functools
from collections.abc import Collection
from enum import StrEnum

from prometheus_client import Counter, Gauge, Histogram


class TaskOutcome(StrEnum):
    """How one delivery of a task ended on this agent."""

    SUCCEEDED = "succeeded"
    FAILED = "failed"
    RETRIED = "retried"
    DEAD_LETTERED = "dead_lettered"
    HANDED_BACK = "handed_back"
    # A handler ran although another run had already stored the task's result.
    DUPLICATE = "duplicate"
    # Delivered again after its result was stored (a replay of finished work): not run.
    ALREADY_DONE = "already_done"
    # Put off without being tried (the gateway's circuit was open).
    DEFERRED = "deferred"
    # Another agent took the entry over while this one ran it (this one stalled past the bound).
    LEASE_LOST = "lease_lost"
    # Parked for a person (human review): the task resumes once decided, on whichever agent.
    AWAITING_REVIEW = "awaiting_review"
    # Parked on a task delegated to another fleet: it resumes once that task has ended.
    DELEGATED = "delegated"
    # A task of a protocol major this agent does not speak, left for an agent that does.
    PASSED_ON = "passed_on"


TASKS = Counter("newfuse_agent_tasks_total", "Task deliveries by outcome.", ["outcome"])


@functools.cache
def outcome(name: TaskOutcome) -> Counter:
    """TASKS for one outcome (looked up once: labels() locks and builds a key on every call)."""
    return TASKS.labels(name)


TASK_SECONDS = Histogram(
    "newfuse_agent_task_duration_seconds",
    "Handler time per task.",
    # Up to half an hour: model calls take minutes, and agent tasks chain several of them.
    buckets=(0.005, 0.025, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800),
)
REJECTED = Counter(
    "newfuse_agent_messages_rejected_total", "Messages refused, by reason.", ["reason"]
)
RECLAIMED = Counter("newfuse_agent_tasks_reclaimed_total", "Tasks taken over from a dead consumer.")
INFLIGHT = Gauge("newfuse_agent_tasks_inflight", "Tasks being handled now.")
REDIS_UP = Gauge("newfuse_agent_redis_up", "1 if the last Redis call succeeded.")
DRAINING = Gauge("newfuse_agent_draining", "1 while the agent drains.")
REVIEWS_PENDING = Gauge(
    "newfuse_agent_reviews_pending", "Open reviews of the fleet (its review queue's depth)."
)
REVIEWS_TIMED_OUT = Counter(
    "newfuse_agent_reviews_timed_out_total",
    "Review timeouts this agent applied (each applies once).",
)
REVIEW_SECONDS = Histogram(
    "newfuse_agent_review_decision_seconds",
    "From a review's request to its decision, observed when its task resumes.",
    buckets=(1, 5, 30, 60, 300, 900, 3600, 4 * 3600, 86400, 7 * 86400),
)
DEADLOCKS = Counter(
    "newfuse_agent_deadlocks_total",
    "Cycles of delegations this agent broke by failing the cycle's youngest waiter.",
)
GOLDEN_CASES = Counter(
    "newfuse_agent_golden_cases_total",
    "Golden cases, shadow copies and llmJudge gradings this agent ran for a rollout gate.",
    ["kind", "outcome"],
)
TOKENS = Counter(
    "newfuse_agent_model_tokens_total", "Model tokens this agent's tasks used (gateway usage)."
)
COST = Counter(
    "newfuse_agent_model_cost_total",
    "What this agent's tasks' model calls cost, by the price table.",
)

MEMORY_WRITES = Counter(
    "newfuse_agent_memory_writes_total",
    "Memories this agent's handlers wrote, by outcome (stored, refused: the fleet's limit).",
    ["outcome"],
)
MEMORY_RECALL_SECONDS = Histogram(
    "newfuse_agent_memory_recall_seconds",
    "Recall latency: the query's embedding and the index search.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)
MEMORY_ITEMS = Gauge(
    "newfuse_agent_memory_items", "Memories the fleet holds, as this agent last counted."
)
MEMORY_REEMBEDDED = Gauge(
    "newfuse_agent_memory_reembedded",
    "Memories re-embedded under spec.memory.model by this agent's current or last run.",
)


def p95_ms(latencies: Collection[float]) -> float | None:
    """95th percentile handler latency over the recent tasks (None: no task yet)."""
    if not latencies:
        return None
    ordered = sorted(latencies)
    return round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.95))], 3)
