"""Reading what the agents report to Redis, for one reconcile.

A failure to reach Redis (or an open Redis circuit) is returned as a RedisObservation rather than
raised: it becomes the RedisConnected condition, and the reconcile goes on with pods and status.
Malformed records never fail these reads (RedisStore skips them).
"""

from __future__ import annotations

from redis.exceptions import RedisError

from newfuse import observability as obs
from newfuse.api.budget import BudgetStatus
from newfuse.api.v1alpha1 import NewFuseAgent
from newfuse.core.budget import Usage, budget_status
from newfuse.core.metrics import AgentReports, legacy_agents
from newfuse.core.status import RedisObservation
from newfuse.runtime.ports import RedisPort
from newfuse.wire.keys import FleetKeys


async def count_dead_letters(redis: RedisPort, fleet: NewFuseAgent) -> None:
    """Export the DLQ depth (an alert on its growth catches poisoned work early)."""
    meta = fleet.metadata
    try:
        depth = await redis.dead_letter_count(FleetKeys(meta.namespace, meta.name))
    except (RedisError, OSError):
        return  # the Redis condition already reports the outage
    obs.DEAD_LETTERS.set(meta.namespace, meta.name, depth)


async def read_reports(redis: RedisPort, fleet: NewFuseAgent) -> AgentReports | RedisObservation:
    """The agents' state updates and per-revision task counts, or why Redis could not say."""
    keys = FleetKeys(fleet.metadata.namespace, fleet.metadata.name)
    try:
        return AgentReports(
            await redis.agent_states(keys),
            await redis.revision_counts(keys),
            await redis.retired_states(keys),
            await redis.usage(keys),
        )
    except (RedisError, OSError) as exc:
        return RedisObservation(reachable=False, error=f"{type(exc).__name__}: {exc}")


async def mirror_budget(
    redis: RedisPort, fleet: NewFuseAgent, usage: Usage | None
) -> BudgetStatus | None:
    """Put spec.budget's hard limits where submissions check them; today's spend against it."""
    meta, spec = fleet.metadata, fleet.spec.budget
    try:
        await redis.put_budget(FleetKeys(meta.namespace, meta.name), spec)
    except (RedisError, OSError):
        return None  # the Redis condition reports it; the next reconcile puts it again
    if usage is None:
        return None
    obs.FLEET_SPEND.set(meta.namespace, meta.name, usage.cost_today, "cost")
    obs.FLEET_SPEND.set(meta.namespace, meta.name, usage.tokens_today, "tokens")
    if spec is None:
        return None
    return budget_status(spec, usage.day, usage.tokens_today, usage.cost_today)


async def retire_legacy(
    redis: RedisPort, keys: FleetKeys, reports: AgentReports, live: set[str], revisions: set[str]
) -> None:
    """Retire drained agents of revisions no pod runs any more (a decommissioned legacy)."""
    legacy = legacy_agents(reports.updates, live, revisions)
    if not legacy:
        return
    await redis.retire_agents(keys, legacy)
    reports.updates[:] = [u for u in reports.updates if u not in legacy]
    reports.retired[:] = [r for r in reports.retired if r not in legacy] + legacy
