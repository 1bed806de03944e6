"""Per-fleet signing keys: each fleet's agents accept only their own fleet's key.

With one key for every fleet, a team that can read its own fleet's key can sign for any fleet
(the audience check stops replays, not forgeries). With NEWFUSE_PER_FLEET_KEYS, the operator makes
a key for each fleet without spec.signing.keySecretRef, in a Secret the fleet owns, so it goes
with the fleet. Whatever a fleet's key, the operator signs what it sends that fleet (drain
notices) with it: the agents accept no other.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import replace
from typing import Final

from kubernetes.client.exceptions import ApiException

from newfuse.api.v1alpha1 import NewFuseAgent, SecretKeyRef
from newfuse.config import OperatorConfig
from newfuse.core.pods import AgentDefaults
from newfuse.runtime.ports import KubePort, RedisPort
from newfuse.wire.keys import FleetKeys
from newfuse.wire.signing import Signer

log = logging.getLogger("newfuse.fleet_keys")
SECRET_SUFFIX: Final = "-newfuse-signing"  # noqa: S105 - a name suffix
KEY: Final = "key"


def secret_name(fleet: str) -> str:
    """The Secret holding the key the operator made for ``fleet``."""
    return f"{fleet}{SECRET_SUFFIX}"


class FleetKeysManager:
    """Makes (when enabled) and reads each fleet's signing key."""

    def __init__(self, config: OperatorConfig, kube: KubePort, redis: RedisPort) -> None:
        """Make keys if ``config.per_fleet_keys``; register each with ``redis`` for its drains."""
        self.enabled = config.per_fleet_keys
        self.kube, self.redis = kube, redis

    async def defaults_for(self, fleet: NewFuseAgent, defaults: AgentDefaults) -> AgentDefaults:
        """``defaults`` with the fleet's own key Secret, made first if it is missing."""
        meta = fleet.metadata
        keys = FleetKeys(meta.namespace, meta.name)
        own = fleet.spec.signing.key_secret_ref if fleet.spec.signing else None
        if own is not None:
            try:
                value = await self.kube.read_secret_key(meta.namespace, own.name, own.key)
            except ApiException as exc:  # no RBAC to read it: drains go out with our own key
                log.warning("cannot read %s/%s: %s", meta.namespace, own.name, exc.reason)
                value = None
            self._register(keys, value)
            return defaults
        if not self.enabled:
            self.redis.fleet_signers.pop(keys, None)
            return defaults
        name = secret_name(meta.name)
        data = await self.kube.ensure_owned_secret(
            meta, name, lambda: {KEY: secrets.token_urlsafe(36)}
        )
        self._register(keys, data.get(KEY))
        return replace(defaults, signing_secret=SecretKeyRef(name=name, key=KEY))

    def _register(self, keys: FleetKeys, value: str | None) -> None:
        if value:
            self.redis.fleet_signers[keys] = Signer(value.encode())
        else:
            self.redis.fleet_signers.pop(keys, None)
