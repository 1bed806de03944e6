"""The Redis key layout, namespaced by Kubernetes namespace and fleet.

Every key of a fleet shares the hash tag `{<namespace>/<fleet>}`, so on Redis Cluster they live in
one slot (multi-key Lua scripts keep working) and two fleets never see each other's keys.

The set of keys is closed: `all_keys()` names every key a fleet can have, so deleting a fleet is
one UNLINK of known names, never a SCAN of the keyspace. Per-item records that must expire
(results, idempotency ids, replay guards) are fields of a hash with a companion sorted set of
expiry times (`expiry_of`), because Redis 7.0 has no per-field TTL and per-item keys could only be
found again by scanning.
"""

from __future__ import annotations

from dataclasses import dataclass

from newfuse.wire.signing import Audience, Channel
from newfuse.wire.tasks import PRIORITY_ORDER

KEY_ROOT = "newfuse"


# Set of "<namespace>/<fleet>" whose tasks have webhooks: every gateway replica delivers for these.
A2A_PUSH_FLEETS = f"{KEY_ROOT}:a2a:push-fleets"
# The consumer group of a fleet's event stream that webhook deliveries read through.
A2A_PUSH_GROUP = "push"


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

    def audience(self, channel: Channel) -> Audience:
        """Who a message on ``channel`` of this fleet is addressed to (and signed for)."""
        return Audience(self.namespace, self.fleet, channel)

    @property
    def fleet_state(self) -> str:
        """Hash: `state` the operator's fleet StateUpdate, `summary` its FleetSummary (JSON)."""
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
        """Hash: task id -> stream entry id at submission (makes task ids idempotent).

        A field expires with the task's result (see `expiry_of`).
        """
        return f"{self.prefix}:tasks:index"

    @property
    def retries(self) -> str:
        """Sorted set of tasks waiting to be retried: score = due time (Redis ms), member = entry.

        Members are moved back onto their priority stream atomically once due (PROMOTE_DUE_LUA).
        """
        return f"{self.prefix}:tasks:retries"

    @property
    def result_stream(self) -> str:
        """Stream of results (AI_RESULT_CHANNEL), one entry per task, in completion order."""
        return f"{self.prefix}:results"

    @property
    def result_index(self) -> str:
        """Hash: task id -> result envelope; the first stored result wins (exactly-once results)."""
        return f"{self.prefix}:results:index"

    @property
    def a2a_tasks(self) -> str:
        """Hash: task id -> the fleet API's record of an A2A task (context, skill, message id).

        A field expires (see `expiry_of`) a week after the task was sent: past the result's own
        ttl, so GetTask still answers for a task that waited in a long backlog.
        """
        return f"{self.prefix}:a2a:tasks"

    @property
    def a2a_push_dead(self) -> str:
        """Stream: webhook deliveries given up on (task, config id, URL, last error), capped."""
        return f"{self.prefix}:a2a:push-dead"

    @property
    def a2a_events(self) -> str:
        """Stream of A2A task events (task id, `TaskEvent`), for tasks the fleet API follows.

        One stream for the fleet, so its entry ids order every event of a task: an SSE client
        resumes from the last id it saw (`Last-Event-ID`). Capped like the result stream.
        """
        return f"{self.prefix}:a2a:events"

    @property
    def reviews(self) -> str:
        """Hash: review id -> ReviewRequest (JSON), what the reviewers see (newfuse.wire.review).

        This hash and the three below lose a review's fields a result ttl after its decision.
        """
        return f"{self.prefix}:reviews"

    @property
    def review_states(self) -> str:
        """Hash: review id -> ReviewState; moved on only by DECIDE_LUA (one decision wins)."""
        return f"{self.prefix}:reviews:state"

    @property
    def review_decisions(self) -> str:
        """Hash: review id -> ReviewDecision (JSON)."""
        return f"{self.prefix}:reviews:decision"

    @property
    def review_resume(self) -> str:
        """Hash: review id -> "<priority>\\n<task id>\\n<envelope>", enqueued once decided."""
        return f"{self.prefix}:reviews:resume"

    @property
    def review_due(self) -> str:
        """Sorted set of open reviews: score = when the timeout applies (Redis ms)."""
        return f"{self.prefix}:reviews:due"

    @property
    def review_log(self) -> str:
        """Stream: every decision with its request (the audit log, and the feedback dataset)."""
        return f"{self.prefix}:reviews:log"

    @property
    def waits(self) -> str:
        """Hash: task id -> WaitRecord (JSON) of a task waiting on a delegated task."""
        return f"{self.prefix}:waits"

    @property
    def waits_open(self) -> str:
        """Sorted set of waiting task ids: score = Redis ms (to the µs) before the children left."""
        return f"{self.prefix}:waits:open"

    @property
    def waits_resume(self) -> str:
        """Hash: task id -> "<priority>\\n<child>\\n<envelope>", enqueued when the child ends."""
        return f"{self.prefix}:waits:resume"

    @property
    def deadlocks(self) -> str:
        """Stream: every deadlock the agents broke (the cycle, the task failed), capped."""
        return f"{self.prefix}:deadlocks"

    @property
    def flows(self) -> str:
        """Hash: workflow or transaction id -> its kind and definition (JSON), kept a week."""
        return f"{self.prefix}:flows"

    @property
    def golden(self) -> str:
        """Hash: the rollout's current golden-task run ("id", and the run itself as JSON)."""
        return f"{self.prefix}:golden"

    @property
    def golden_outputs(self) -> str:
        """Hash: "<revision>/<case>" -> GoldenOutput (JSON) of the current golden run."""
        return f"{self.golden}:outputs"

    @property
    def golden_claims(self) -> str:
        """Hash: "<revision>/<case>" -> "<agent>@<Redis ms>", the agent running that case."""
        return f"{self.golden}:claims"

    @property
    def shadow(self) -> str:
        """Hash: the rollout's current shadow run ("id", and its ShadowConfig as "run")."""
        return f"{self.prefix}:shadow"

    @property
    def shadow_cases(self) -> str:
        """Hash: task id -> ShadowCase (JSON): a live task stable ran, copied for the canary."""
        return f"{self.shadow}:cases"

    @property
    def shadow_outputs(self) -> str:
        """Hash: task id -> GoldenOutput (JSON): the canary's answer, never a caller's result."""
        return f"{self.shadow}:outputs"

    @property
    def shadow_claims(self) -> str:
        """Hash: task id -> "<agent>@<Redis ms>", the canary agent running that copy."""
        return f"{self.shadow}:claims"

    @property
    def usage(self) -> str:
        """Hash: tokens and cost the agents' model calls used, per revision and per UTC day."""
        return f"{self.prefix}:usage"

    @property
    def budget(self) -> str:
        """Hash: spec.budget's hard limits as the operator mirrors them (submissions check it)."""
        return f"{self.prefix}:budget"

    @property
    def memory(self) -> str:
        """Hash: memory id -> MemoryRecord JSON (newfuse.wire.memory): the fleet's memories."""
        return f"{self.prefix}:memory"

    @property
    def memory_vectors(self) -> str:
        """Hash: memory id -> its vector under the active model (`memory_model`)."""
        return f"{self.memory}:vectors"

    @property
    def memory_model(self) -> str:
        """String: the embedding model recalls use (EmbeddingModel.id)."""
        return f"{self.memory}:model"

    @property
    def memory_next_vectors(self) -> str:
        """Hash: memory id -> its vector under the model being re-embedded to."""
        return f"{self.memory}:next:vectors"

    @property
    def memory_next_model(self) -> str:
        """String: the model a re-embedding is moving to, until its cutover."""
        return f"{self.memory}:next:model"

    @property
    def memory_log(self) -> str:
        """Stream: every memory added or deleted, so readers' indexes follow by deltas."""
        return f"{self.memory}:log"

    @property
    def memory_sweep_lock(self) -> str:
        """String: the agent holding the fleet's turn to sweep expired memories (expires)."""
        return f"{self.memory}:sweep"

    @property
    def memory_reembed_lock(self) -> str:
        """String: the agent re-embedding the fleet's memory (renewed at every pass)."""
        return f"{self.memory}:reembed"

    @property
    def memory_quarantine(self) -> str:
        """Hash: memory id -> the canary revision that wrote it, visible to that revision only."""
        return f"{self.memory}:quarantine"

    @property
    def protocol(self) -> str:
        """Sorted set: protocol major -> when a task of it was last submitted or taken (ms)."""
        return f"{self.prefix}:protocol"

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

    @property
    def rate_limit_holes(self) -> str:
        """Sorted set of rate-limit slots given back by cancelled waiters (see ratelimit.py)."""
        return f"{self.rate_limit}:holes"

    @property
    def seen(self) -> str:
        """Hash: signed message id -> the stream entry it arrived as (the replay guard)."""
        return f"{self.prefix}:seen"

    @staticmethod
    def coordination_seen_field(agent_id: str, message_id: str) -> str:
        """The `seen` field of a coordination message one agent took.

        Per agent, because every agent of the fleet hears the same broadcast; by agent id (the
        pod name), not incarnation, so a restarted agent still refuses a replay.
        """
        return f"coordination:{agent_id}:{message_id}"

    @staticmethod
    def expiry_of(hash_key: str) -> str:
        """Sorted set of (field, expiry time in Redis ms) for a hash whose fields expire."""
        return f"{hash_key}:expiry"

    @property
    def expiring_hashes(self) -> tuple[str, ...]:
        """The hashes whose fields expire, swept by SWEEP_LUA."""
        return (
            self.result_index,
            self.task_index,
            self.seen,
            self.a2a_tasks,
            self.reviews,
            self.review_states,
            self.review_decisions,
            self.review_resume,
            self.flows,
        )

    def all_keys(self) -> tuple[str, ...]:
        """Every key this fleet can have in Redis (deleting these deletes the fleet)."""
        return (
            self.fleet_state,
            self.agents,
            self.retired,
            self.versions,
            *(self.tasks(p) for p in PRIORITY_ORDER),
            self.task_index,
            self.retries,
            self.result_stream,
            self.result_index,
            self.dead_letters,
            self.counters,
            self.rate_limit,
            self.rate_limit_holes,
            self.seen,
            self.a2a_tasks,
            self.a2a_events,
            self.a2a_push_dead,
            self.reviews,
            self.review_states,
            self.review_decisions,
            self.review_resume,
            self.review_due,
            self.review_log,
            self.waits,
            self.waits_open,
            self.waits_resume,
            self.deadlocks,
            self.flows,
            self.golden,
            self.golden_outputs,
            self.golden_claims,
            self.usage,
            self.budget,
            self.protocol,
            self.memory,
            self.memory_quarantine,
            self.memory_vectors,
            self.memory_model,
            self.memory_next_vectors,
            self.memory_next_model,
            self.memory_log,
            self.memory_sweep_lock,
            self.memory_reembed_lock,
            self.shadow,
            self.shadow_cases,
            self.shadow_outputs,
            self.shadow_claims,
            *(self.expiry_of(h) for h in self.expiring_hashes),
        )

    FLEET_VERSION_FIELD = "fleet"
    FLEET_STATE_FIELD = "state"
    FLEET_SUMMARY_FIELD = "summary"  # the operator's FleetSummary (phase, rollout): live feeds
