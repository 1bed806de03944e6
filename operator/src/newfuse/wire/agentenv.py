"""The environment variables an agent pod is given: their one home.

The operator's pod template (`newfuse.core.pods`) writes them and the agent (`newfuse_agent.config`,
`newfuse_agent.gateway_config`) reads them. Both sides name them through this enum, and
`tests/unit/test_agent_env_contract.py` builds a pod and reads its environment back the way the
agent does, so a name changed on one side alone fails there rather than in a user's cluster. The
task policy's variables have their home in `newfuse.wire.taskpolicy`.
"""

from __future__ import annotations

from enum import StrEnum


class AgentEnv(StrEnum):
    """Every NEWFUSE_* variable of an agent pod, but the task policy's."""

    AGENT_ID = "NEWFUSE_AGENT_ID"
    NAMESPACE = "NEWFUSE_NAMESPACE"
    FLEET = "NEWFUSE_FLEET"
    REVISION = "NEWFUSE_REVISION"
    CAPABILITIES = "NEWFUSE_CAPABILITIES"
    PROTOCOL_VERSION = "NEWFUSE_PROTOCOL_VERSION"
    # The protocol majors this agent takes, e.g. "2" (unset: every major the image supports). A
    # task of another major is passed on to an agent that speaks it (newfuse.wire.protocol).
    PROTOCOL_SPEAKS = "NEWFUSE_PROTOCOL_SPEAKS"
    CONCURRENCY = "NEWFUSE_CONCURRENCY"
    HEARTBEAT_SECONDS = "NEWFUSE_HEARTBEAT_SECONDS"
    HTTP_PORT = "NEWFUSE_HTTP_PORT"
    HTTP_ADDRESS = "NEWFUSE_HTTP_ADDRESS"
    REDIS_URL = "NEWFUSE_REDIS_URL"
    REDIS_CA_FILE = "NEWFUSE_REDIS_CA_FILE"
    SIGNING_KEY = "NEWFUSE_SIGNING_KEY"
    SIGNING_ACCEPT = "NEWFUSE_SIGNING_ACCEPT"
    REQUIRE_SIGNATURES = "NEWFUSE_REQUIRE_SIGNATURES"
    ENCRYPTION_KEY = "NEWFUSE_ENCRYPTION_KEY"
    ENCRYPTION_ACCEPT = "NEWFUSE_ENCRYPTION_ACCEPT"
    DRAIN_GRACE_SECONDS = "NEWFUSE_DRAIN_GRACE_SECONDS"
    LOG_LEVEL = "NEWFUSE_LOG_LEVEL"
    FAULT_RATE = "NEWFUSE_FAULT_RATE"
    # "upper": the built-in echo upper-cases its strings, a wrong answer without an error (drills
    # of the golden-task gate, which the success-rate gate cannot see).
    ECHO_CASE = "NEWFUSE_ECHO_CASE"
    TRACE_EXPORTER = "NEWFUSE_TRACE_EXPORTER"
    GATEWAY_ENDPOINT = "NEWFUSE_GATEWAY_ENDPOINT"
    GATEWAY_MODEL = "NEWFUSE_GATEWAY_MODEL"
    GATEWAY_API_KEY = "NEWFUSE_GATEWAY_API_KEY"
    GATEWAY_TIMEOUT_SECONDS = "NEWFUSE_GATEWAY_TIMEOUT_SECONDS"
    GATEWAY_RATE_LIMIT = "NEWFUSE_GATEWAY_RATE_LIMIT"
    # spec.gateway.prices as JSON (newfuse.wire.usage.Price): what a task's tokens cost.
    GATEWAY_PRICES = "NEWFUSE_GATEWAY_PRICES"
    # spec.review as the JSON of newfuse.wire.review.ReviewPolicy (unset: nothing is reviewed).
    REVIEW_POLICY = "NEWFUSE_REVIEW_POLICY"
    # spec.memory (newfuse.api.memory): the embedding model the fleet's memory should use (an
    # agent re-embeds it in the background when it differs), its size limit, its default TTL.
    MEMORY_MODEL = "NEWFUSE_MEMORY_MODEL"
    MEMORY_MAX_ITEMS = "NEWFUSE_MEMORY_MAX_ITEMS"
    MEMORY_TTL_SECONDS = "NEWFUSE_MEMORY_TTL_SECONDS"
    # spec.memory.postgres: the fleet role's DSN (from its Secret); unset, the memory is in Redis.
    MEMORY_POSTGRES_URL = "NEWFUSE_MEMORY_POSTGRES_URL"
