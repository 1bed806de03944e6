"""Read a fleet's task backlog from Redis, fold it for status, and export it as gauges.

The reads are a few O(1)/O(log n) commands per fleet (see RedisStore.task_observation), cheap
enough for every reconcile. A failed read leaves the last known backlog in status: the
RedisConnected condition already tells the outage.
"""

from __future__ import annotations

import logging

from redis.exceptions import RedisError, ResponseError

from newfuse import observability as obs
from newfuse.api.tasks import Backlog
from newfuse.core.backlog import fold_backlog
from newfuse.runtime.ports import RedisPort
from newfuse.wire.keys import FleetKeys

log = logging.getLogger("newfuse.controller")


async def observe_backlog(redis: RedisPort, keys: FleetKeys) -> Backlog | None:
    """The fleet's backlog (None if Redis could not say), with its gauges set."""
    try:
        backlog = fold_backlog(await redis.task_observation(keys))
    except ResponseError as exc:
        # Redis answered, with an error: a key of the wrong type, say. Worth a look.
        log.warning("cannot read the backlog of %s/%s: %s", keys.namespace, keys.fleet, exc)
        return None
    except (RedisError, OSError) as exc:
        # An outage: the RedisConnected condition reports it, once per fleet and not per read.
        log.debug("could not read the backlog of %s/%s: %s", keys.namespace, keys.fleet, exc)
        return None
    for row in backlog.by_priority:
        where = (keys.namespace, keys.fleet)
        obs.FLEET_BACKLOG.set(*where, row.waiting, row.priority)
        obs.FLEET_OLDEST_WAITING.set(*where, row.oldest_waiting_seconds or 0, row.priority)
    return backlog
