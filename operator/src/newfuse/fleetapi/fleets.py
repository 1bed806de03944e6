"""The fleets one gateway serves: a TaskClient and an A2AStore per fleet, over one Redis pool.

Clients are made on first use and kept: they are a few objects over the shared connection pool,
and a fleet the operator has not mirrored to Redis is refused before one is made (`lookup`).
"""

from __future__ import annotations

from dataclasses import dataclass

import redis.asyncio as aioredis

from newfuse.adapters.a2aevents import EventLog
from newfuse.adapters.a2astore import A2AStore
from newfuse.adapters.taskclient import TaskClient
from newfuse.fleetapi.a2amap import A2A_VERSION
from newfuse.fleetapi.feed import Feed
from newfuse.fleetapi.hub import Hub

SENDER = "newfuse-gateway"


@dataclass(frozen=True)
class Fleet:
    """One fleet as the gateway reaches it."""

    namespace: str
    name: str
    tasks: TaskClient
    store: A2AStore
    events: EventLog
    hub: Hub
    feed: Feed


@dataclass(frozen=True)
class Found:
    """A fleet the operator has mirrored, with what its Agent Card says of it."""

    fleet: Fleet
    capabilities: list[str]
    protocol_version: str  # spec.protocolVersion (the gateway's own until the operator says)


class Fleets:
    """Every fleet this gateway has served, by (namespace, name)."""

    def __init__(
        self,
        client: aioredis.Redis,
        *,
        signing_key: bytes | None = None,
        encryption_key: bytes | None = None,
    ) -> None:
        """Reach fleets through ``client`` (decode_responses=True), signing with ``signing_key``."""
        self.client = client
        self._signing_key, self._encryption_key = signing_key, encryption_key
        self._known: dict[tuple[str, str], Fleet] = {}

    async def lookup(self, namespace: str, name: str) -> Found | None:
        """The fleet as it stands; None if the operator has not mirrored it to Redis.

        Only fleets that exist are kept, so requests naming made-up fleets cannot grow the map.
        """
        fleet = self._known.get((namespace, name)) or self._make(namespace, name)
        described = await fleet.store.described()
        if described is None:
            self._known.pop((namespace, name), None)
            return None
        self._known[(namespace, name)] = fleet
        capabilities, version = described
        return Found(fleet, list(capabilities), version or A2A_VERSION)

    def _make(self, namespace: str, name: str) -> Fleet:
        signing, sealing = self._signing_key, self._encryption_key
        tasks = TaskClient(
            self.client, namespace, name, sender=SENDER, signing_key=signing, encryption_key=sealing
        )
        store = A2AStore(tasks, signing_key=signing, encryption_key=sealing)
        events = EventLog(self.client, tasks.keys)
        return Fleet(namespace, name, tasks, store, events, Hub(events), Feed(tasks))

    async def aclose(self) -> None:
        """Close the shared connection pool."""
        await self.client.aclose()
