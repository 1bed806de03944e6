"""The Redis key layout, namespaced by Kubernetes namespace and fleet.

Every key of a fleet shares the hash tag `{<namespace>/<fleet>}`, so on Redis Cluster they live in
one slot (multi-key Lua scripts keep working) and two fleets never see each other's keys. Deleting a
fleet deletes everything matching `pattern`.
"""

from __future__ import annotations

from dataclasses import dataclass

KEY_ROOT = "newfuse"


@dataclass(frozen=True)
class FleetKeys:
    """All Redis keys of one fleet."""

    namespace: str
    fleet: str

    @property
    def prefix(self) -> str:
        """The common prefix, including the cluster hash tag."""
        return f"{KEY_ROOT}:{{{self.namespace}/{self.fleet}}}"

    @property
    def pattern(self) -> str:
        """A SCAN MATCH pattern for every key of the fleet (hash-tag braces escaped)."""
        return f"{KEY_ROOT}:\\{{{self.namespace}/{self.fleet}\\}}:*"

    @property
    def fleet_state(self) -> str:
        """Hash: field `state` holds the operator's fleet StateUpdate (JSON)."""
        return f"{self.prefix}:fleet"

    @property
    def agents(self) -> str:
        """Hash: agent id -> that agent's latest StateUpdate (JSON), written by the agent."""
        return f"{self.prefix}:agents"

    @property
    def retired(self) -> str:
        """Hash: agent id -> last StateUpdate of an agent retired with a legacy revision."""
        return f"{self.prefix}:retired"

    @property
    def versions(self) -> str:
        """Hash: record id -> version of the stored StateUpdate, for compare-and-set."""
        return f"{self.prefix}:versions"

    def agent_version_field(self, agent_id: str) -> str:
        """The versions-hash field of one agent's record."""
        return f"agent:{agent_id}"

    @property
    def coordination_channel(self) -> str:
        """Pub/sub channel for system messages (AI_COORDINATION_CHANNEL)."""
        return f"{self.prefix}:coordination"

    @property
    def task_stream(self) -> str:
        """Stream prefix for task distribution (AI_TASK_CHANNEL); one stream per priority."""
        return f"{self.prefix}:tasks"

    def tasks(self, priority: str) -> str:
        """The task stream of one priority."""
        return f"{self.task_stream}:{priority}"

    @property
    def task_index(self) -> str:
        """Hash: task id -> stream entry id at submission (makes task ids idempotent)."""
        return f"{self.prefix}:tasks:index"

    @property
    def result_stream(self) -> str:
        """Stream of results (AI_RESULT_CHANNEL), one entry per task, in completion order."""
        return f"{self.prefix}:results"

    @property
    def result_index(self) -> str:
        """Hash: task id -> result envelope; the first stored result wins (exactly-once results)."""
        return f"{self.prefix}:results:index"

    @property
    def dead_letters(self) -> str:
        """Stream of dead letters: malformed, refused or exhausted messages, with the reason."""
        return f"{self.prefix}:dlq"

    @property
    def counters(self) -> str:
        """Hash of fleet-wide counters (tasks completed/failed, per revision too)."""
        return f"{self.prefix}:counters"

    @property
    def rate_limit(self) -> str:
        """Key of the fleet-wide gateway rate limiter."""
        return f"{self.prefix}:ratelimit"

    def replay_guard(self, message_id: str) -> str:
        """Marks a signed message id as seen (expires after the allowed clock skew)."""
        return f"{self.prefix}:seen:{message_id}"

    FLEET_VERSION_FIELD = "fleet"
    FLEET_STATE_FIELD = "state"
