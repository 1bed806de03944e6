"""The stable revision's side of shadow tasks: offer a sampled live task for the canary to answer.

After a live task's result is stored (the caller's answer is the stable one, already), a stable
agent copies the sampled ones into the current shadow run (newfuse.wire.shadow). The canary's side
is in newfuse_agent.golden, beside the golden cases: both run cases for a gate. Offering is best
effort: a copy lost to a Redis hiccup is one sample fewer, never a task lost. A fleet with payload
encryption is never shadowed: a copy would sit in Redis in the clear.
"""

from __future__ import annotations

import json
import logging
import time
from typing import Any

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import RedisError

from newfuse.wire import shadow
from newfuse.wire.keys import FleetKeys
from newfuse.wire.shadow import ShadowCase, ShadowConfig
from newfuse.wire.tasks import TaskPayload

log = logging.getLogger("newfuse_agent.shadow")
# How long an agent trusts the shadow run it read (a new step's run is seen this much later).
CONFIG_SECONDS = 2.0


class ShadowTap:
    """Copies sampled live tasks of this (stable) revision into the current shadow run."""

    def __init__(
        self, client: aioredis.Redis, keys: FleetKeys, revision: str, *, enabled: bool = True
    ) -> None:
        """Offer ``revision``'s tasks through ``client`` (never, unless ``enabled``)."""
        self.client, self.keys, self.revision, self.enabled = client, keys, revision, enabled
        self._offer = client.register_script(shadow.OFFER_LUA)
        self._config: ShadowConfig | None = None
        self._read_at = float("-inf")

    async def _current(self) -> ShadowConfig | None:
        if time.monotonic() - self._read_at >= CONFIG_SECONDS:
            raw = await self.client.hget(self.keys.shadow, "run")
            try:
                self._config = None if raw is None else ShadowConfig.model_validate_json(raw)
            except ValidationError:
                self._config = None
            self._read_at = time.monotonic()
        return self._config

    async def offer(self, task: TaskPayload, output: Any, seconds: float, cost: float) -> None:
        """Copy ``task`` with its answer, if a shadow run samples it from this revision."""
        if not self.enabled:
            return
        try:
            config = await self._current()
            if config is None or config.stable != self.revision or not config.sampled(task.task_id):
                return
            case = ShadowCase(
                handler=task.handler,
                input=task.input,
                output=json.loads(json.dumps(output, default=str)),
                seconds=seconds,
                cost=cost,
            )
            await self._offer(
                keys=[self.keys.shadow, self.keys.shadow_cases],
                args=[config.id, task.task_id, case.model_dump_json(), config.max_samples],
            )
        except (RedisError, OSError) as exc:
            log.debug("offering %s to the shadow run failed: %s", task.task_id, exc)
