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

    @property
    def result_stream(self) -> str:
        """Stream of results (AI_RESULT_CHANNEL)."""
        return f"{self.prefix}:results"

    FLEET_VERSION_FIELD = "fleet"
    FLEET_STATE_FIELD = "state"
