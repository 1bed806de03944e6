"""The one writer of versioned state in Redis, shared by the agents and the operator.

Every StateUpdate goes through STATE_CAS_LUA, which stores it only if its version is newer than
the stored one, so a delayed or replayed write never overwrites newer state. Agents and the
operator used to carry a copy each; one function keeps the keys and arguments in one place.
"""

from __future__ import annotations

import redis.asyncio as aioredis

from newfuse.wire.keys import FleetKeys
from newfuse.wire.state import STATE_CAS_LUA, StateUpdate


async def put_state(
    client: aioredis.Redis, keys: FleetKeys, update: StateUpdate, *, fleet: bool = False
) -> bool:
    """Store an agent's update (or, with ``fleet``, the operator's fleet summary) unless stale.

    Returns True if it was stored.
    """
    if fleet:
        data, field, version_field = (
            keys.fleet_state,
            keys.FLEET_STATE_FIELD,
            keys.FLEET_VERSION_FIELD,
        )
    else:
        data, field = keys.agents, update.agent_id
        version_field = keys.agent_version_field(field)
    script = client.register_script(STATE_CAS_LUA)
    stored = await script(
        keys=[data, keys.versions], args=[field, version_field, update.version, update.to_json()]
    )
    return bool(stored)
