"""Per-fleet Redis users at run time: the ACL user, and the Secret that hands it to the agents.

The rules are applied on every reconcile, not once: users made with ACL SETUSER live in Redis'
memory only (neither the AOF nor a restart keeps them), so a restarted Redis gets them back at the
fleet's next reconcile. A Redis that cannot be reached does not hold pods back: they get the
fleet's Secret anyway and log in once the user is back.
"""

from __future__ import annotations

import logging
import secrets
from dataclasses import replace

from redis.exceptions import RedisError

from newfuse.api.v1alpha1 import NewFuseAgent, SecretKeyRef
from newfuse.config import OperatorConfig
from newfuse.core import acl
from newfuse.core.pods import AgentDefaults
from newfuse.runtime.ports import KubePort, RedisPort
from newfuse.wire.keys import FleetKeys

log = logging.getLogger("newfuse.redis_users")
PASSWORD_KEY = "password"  # noqa: S105 - a Secret key name


class FleetRedisUsers:
    """Gives each fleet without its own spec.redis a Redis user of its own (when enabled)."""

    def __init__(self, config: OperatorConfig, kube: KubePort, redis: RedisPort) -> None:
        """Enabled by ``config.manage_redis_users``; agents reach ``effective_agent_redis_url``."""
        self.enabled = config.manage_redis_users
        self.base_url = config.effective_agent_redis_url
        self.kube, self.redis = kube, redis

    def applies_to(self, fleet: NewFuseAgent) -> bool:
        """True if this fleet's agents log in as the fleet's own user."""
        return self.enabled and not (fleet.spec.redis and fleet.spec.redis.url_secret_ref)

    async def defaults_for(self, fleet: NewFuseAgent, defaults: AgentDefaults) -> AgentDefaults:
        """``defaults`` with the fleet's own Redis Secret, its user made sure of first."""
        if not self.applies_to(fleet):
            return defaults
        keys = FleetKeys(fleet.metadata.namespace, fleet.metadata.name)
        user = acl.user_name(keys)
        name = acl.secret_name(fleet.metadata.name)

        def fresh() -> dict[str, str]:
            password = secrets.token_urlsafe(32)
            return {acl.SECRET_URL_KEY: acl.url_for(self.base_url, user, password),
                    PASSWORD_KEY: password}  # fmt: skip

        data = await self.kube.ensure_owned_secret(fleet.metadata, name, fresh)
        try:
            await self.redis.set_acl_user(user, acl.rules(keys, data[PASSWORD_KEY]))
        except (RedisError, OSError) as exc:
            log.warning("cannot set Redis user %s yet (%s): its pods log in once it is", user, exc)
        return replace(defaults, redis_secret=SecretKeyRef(name=name, key=acl.SECRET_URL_KEY))
