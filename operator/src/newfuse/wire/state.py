"""AgentState and StateUpdate: how agents and the operator publish versioned state to Redis.

A StateUpdate carries a version that only grows. Writers go through STATE_CAS_LUA, which stores
an update only if its version is newer than the stored one, so a delayed or replayed write can never
overwrite newer state (two operator replicas, an agent restarting, a retried pipeline).
"""

from __future__ import annotations

import datetime as dt
from enum import StrEnum
from typing import Final

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel


class WireModel(BaseModel):
    """camelCase JSON on the wire; unknown fields ignored so newer writers stay readable."""

    model_config = ConfigDict(
        alias_generator=to_camel, populate_by_name=True, extra="ignore", frozen=True
    )

    def to_json(self) -> str:
        """Serialise with camelCase keys."""
        return self.model_dump_json(by_alias=True)


class AgentStatus(StrEnum):
    """Whether an agent takes tasks."""

    ACTIVE = "active"
    INACTIVE = "inactive"


class AgentMetrics(WireModel):
    """Counters an agent reports about itself (cumulative since it started)."""

    requests_handled: int = Field(default=0, ge=0)
    last_active: dt.datetime | None = None
    tasks_completed: int = Field(default=0, ge=0)
    tasks_failed: int = Field(default=0, ge=0)
    latency_p95_ms: float | None = None


class AgentState(WireModel):
    """The seed's AgentState: who the agent is and what it has done."""

    id: str
    status: AgentStatus
    capabilities: list[str] = Field(default_factory=list)
    metrics: AgentMetrics = Field(default_factory=AgentMetrics)
    revision: str | None = None
    # Protocol majors the agent takes (empty: an image from before this field, which spoke 1.x).
    speaks: list[int] = Field(default_factory=list)


class StateUpdate(WireModel):
    """One versioned write of an AgentState (an agent's own, or the operator's fleet summary)."""

    agent_id: str
    state: AgentState
    version: int = Field(ge=0)
    timestamp: dt.datetime


class RolloutSummary(WireModel):
    """Where a phased rollout stands, as the fleet's status says."""

    phase: str
    stage: str
    step: int
    stable_revision: str
    canary_revision: str
    canary_agents: int = 0
    message: str = ""
    # The last gate's verdict and its numbers (golden pass rates, cost per task), as one line.
    gate: str = ""


class FleetSummary(WireModel):
    """The fleet's status as the operator last wrote it, for readers without API access.

    The gateway's live feed reads it from Redis (one place it already watches) rather than
    watching the Kubernetes API with rights of its own.
    """

    phase: str | None = None
    replicas: int = 0
    ready_replicas: int = 0
    updated_replicas: int = 0
    update_revision: str | None = None
    rollout: RolloutSummary | None = None
    message: str | None = None
    # Today's model spend against spec.budget, as one line (none without a budget).
    budget: str | None = None
    # spec.protocolVersion: the A2A version (major.minor) the fleet speaks; the gateway holds
    # clients to it (A2A-Version) and advertises it in the fleet's Agent Card.
    protocol_version: str | None = None


def next_version(previous: int, now: dt.datetime) -> int:
    """A version newer than ``previous``: wall-clock milliseconds, bumped if the clock stalls.

    Milliseconds (rather than a counter) keep versions growing across restarts of the writer.
    """
    return max(previous + 1, int(now.timestamp() * 1000))


# KEYS[1] data hash, KEYS[2] versions hash; ARGV[1] data field, ARGV[2] version field,
# ARGV[3] version, ARGV[4] payload. Returns 1 if stored, 0 if the stored version is as new or newer.
# A stored version that is not a number (any agent can write the versions hash) counts as absent,
# so one bad value cannot fail every later write of that record.
STATE_CAS_LUA: Final = """
local current = tonumber(redis.call('HGET', KEYS[2], ARGV[2]))
if current and current >= tonumber(ARGV[3]) then
  return 0
end
redis.call('HSET', KEYS[1], ARGV[1], ARGV[4])
redis.call('HSET', KEYS[2], ARGV[2], ARGV[3])
return 1
"""
