"""Fleets on another Redis server: the operator talks to each fleet where its agents are.

A fleet's spec.redis.urlSecretRef may name a different server. The operator used to watch, drain
and clean its own Redis for such a fleet: its rollouts never completed, its keys leaked and the
CLI could not find it. So before each reconcile the operator reads that Secret (it needs `get` on
it), and every call about the fleet goes to a store of that URL, one per URL, each with its own
circuit breaker. Calls about no fleet in particular (the probe, ACL users) go to the operator's.

The routing view is the operator's RedisStore API, dispatched on the FleetKeys a call names, so
the code that reconciles, rolls out and finalizes fleets is unchanged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, cast

from kubernetes.client.exceptions import ApiException

from newfuse.adapters.redis_store import RedisStore
from newfuse.api.v1alpha1 import NewFuseAgent
from newfuse.config import OperatorConfig
from newfuse.runtime.ports import KubePort, RedisPort
from newfuse.wire.keys import FleetKeys

log = logging.getLogger("newfuse.redis_routes")


class RedisRoutes:
    """The operator's store, and one per other Redis server a fleet names."""

    def __init__(
        self,
        config: OperatorConfig,
        kube: KubePort,
        default: RedisPort,
        connect: Callable[[str], RedisPort] | None = None,
    ) -> None:
        """Route to ``default`` unless a fleet's spec.redis names another server.

        ``connect(url)`` makes the store of another server (a RedisStore unless given).
        """
        self.config, self.kube, self.default = config, kube, default
        self.connect = connect or self._connect
        self.routes: dict[FleetKeys, RedisPort] = {}
        self.stores: dict[str, RedisPort] = {}
        self._same = {config.redis_url, config.effective_agent_redis_url}

    def view(self) -> RedisPort:
        """A store that sends each call to the store of the fleet it names."""
        return cast(RedisPort, _RoutingView(self))

    def store_for(self, keys: FleetKeys | None) -> RedisPort:
        """Where calls about ``keys`` go."""
        return self.routes.get(keys, self.default) if keys is not None else self.default

    async def bind(self, fleet: NewFuseAgent) -> None:
        """Look up the fleet's server (its spec.redis Secret) before acting on it."""
        meta = fleet.metadata
        keys = FleetKeys(meta.namespace, meta.name)
        ref = fleet.spec.redis.url_secret_ref if fleet.spec.redis else None
        url = None
        if ref is not None:
            try:
                url = await self.kube.read_secret_key(meta.namespace, ref.name, ref.key)
            except ApiException as exc:
                log.warning("cannot read %s/%s: %s", meta.namespace, ref.name, exc.reason)
        if not url or url in self._same:
            self.routes.pop(keys, None)
            return
        store = self.stores.get(url)
        if store is None:
            store = self.connect(url)
            store.fleet_signers = self.default.fleet_signers  # one registry of fleet keys
            self.stores[url] = store
        self.routes[keys] = store

    def _connect(self, url: str) -> RedisPort:
        return RedisStore(
            url,
            timeout=self.config.redis_timeout_seconds,
            signing_key=self.config.signing_key_bytes,
            ca_file=self.config.redis_ca_file,
            backoff=self.config.redis_backoff_seconds,
        )


class _RoutingView:
    """Looks like the operator's RedisStore; each call goes where the FleetKeys it names live."""

    def __init__(self, routes: RedisRoutes) -> None:
        self._routes = routes

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._routes.default, name)
        if not callable(attribute):
            return attribute

        def routed(*args: Any, **kwargs: Any) -> Any:
            keys = next((a for a in (*args, *kwargs.values()) if isinstance(a, FleetKeys)), None)
            method: Callable[..., Any] = getattr(self._routes.store_for(keys), name)
            return method(*args, **kwargs)

        return routed
