"""The fleet's memory as handlers see it (`context.memory`), and its upkeep by the agents.

Trust comes from the fleet's summary that the operator mirrors into Redis (newfuse.core.memory):
an agent of a revision the fleet does not trust yet, a canary, writes into quarantine. The summary
is read at most every few seconds; a stale one errs on the side of quarantine, which is settled by
level on the next reconcile (the operator, in Redis) or upkeep round (the agents, in any backend:
PostgreSQL's has no other settler).

Upkeep runs beside the task loop: every agent settles the quarantine (idempotent), and one agent
of the fleet at a time (a Redis lock each) sweeps expired memories and, when spec.memory.model
differs from the model the memory is under, re-embeds it in the background while recalls keep
using the old model.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Final

import redis.asyncio as aioredis
from pydantic import ValidationError
from redis.exceptions import RedisError

from newfuse.adapters.fleetmemory import FleetMemory
from newfuse.adapters.memoryport import MemoryBackend, MemoryFullError
from newfuse.adapters.redismemory import RedisMemory
from newfuse.adapters.reembed import Progress, reembed
from newfuse.core.memory import Settlement, settlement
from newfuse.wire.keys import FleetKeys
from newfuse.wire.memory import Scalar
from newfuse.wire.state import FleetSummary
from newfuse_agent import metrics
from newfuse_agent.config import AgentConfig
from newfuse_agent.contract import HandlerError, Recollection

log = logging.getLogger(__name__)

TRUST_TTL_SECONDS: Final = 2.0
UPKEEP_SECONDS: Final = 60.0
SWEEP_LOCK_MS: Final = 600_000  # one sweep per fleet per ten minutes
REEMBED_LOCK_MS: Final = 120_000  # renewed at every pass; a dead holder's lapses


class AgentMemory:
    """One agent's view of its fleet's memory (a newfuse_agent.contract.Memory)."""

    def __init__(
        self,
        client: aioredis.Redis,
        keys: FleetKeys,
        config: AgentConfig,
        backend: MemoryBackend | None = None,
        *,
        unreachable: tuple[type[Exception], ...] = (),
        close: Callable[[], Awaitable[None]] | None = None,
    ) -> None:
        """Use the fleet's memory in ``backend`` (default: Redis through ``client``).

        ``client`` is the fleet's own Redis user: trust and upkeep's locks live there whatever the
        backend. ``unreachable`` are the backend's errors that mean "try again later" (Redis'
        are known); ``close`` releases its connection.
        """
        self.client, self.keys, self.config = client, keys, config
        self._unreachable: tuple[type[Exception], ...] = (RedisError, OSError, *unreachable)
        self._close = close
        self.fleet = FleetMemory(
            backend or RedisMemory(client, keys, config.memory_max_items),
            config.revision,
            trust=self._trust,
            model=config.memory_model,
        )
        self._trusted: tuple[float, Settlement] | None = None
        self._renewal: asyncio.Future[bool] | None = None

    async def remember(
        self,
        text: str,
        metadata: dict[str, Scalar] | None = None,
        *,
        memory_id: str | None = None,
        ttl_seconds: float | None = None,
    ) -> str:
        """Remember ``text`` (quarantined while this revision is a canary); its id."""
        ttl = ttl_seconds if ttl_seconds is not None else self.config.memory_ttl_seconds
        try:
            stored = await self.fleet.remember(text, metadata, memory_id=memory_id, ttl_seconds=ttl)
        except ValidationError as exc:
            raise HandlerError(f"memory refused: {_fields(exc)}", retryable=False) from exc
        except MemoryFullError as exc:
            metrics.MEMORY_WRITES.labels("refused").inc()
            raise HandlerError(str(exc), retryable=False) from exc
        except self._unreachable as exc:
            raise HandlerError(f"memory unreachable: {exc}", retryable=True) from exc
        metrics.MEMORY_WRITES.labels("stored").inc()
        return stored

    async def recall(
        self, query: str, k: int = 5, where: dict[str, Scalar] | None = None
    ) -> list[Recollection]:
        """The ``k`` memories nearest ``query`` this revision may see, best first."""
        started = time.perf_counter()
        try:
            found = await self.fleet.recall(query, k, where)
        except ValueError as exc:
            raise HandlerError(f"recall refused: {exc}", retryable=False) from exc
        except self._unreachable as exc:
            raise HandlerError(f"memory unreachable: {exc}", retryable=True) from exc
        metrics.MEMORY_RECALL_SECONDS.observe(time.perf_counter() - started)
        return [
            Recollection(r.record.id, r.record.text, r.score, r.record.metadata, r.record.revision)
            for r in found
        ]

    async def forget(self, *memory_ids: str) -> int:
        """Forget these memories; how many existed."""
        try:
            return await self.fleet.forget(*memory_ids)
        except self._unreachable as exc:
            raise HandlerError(f"memory unreachable: {exc}", retryable=True) from exc

    async def upkeep(self) -> None:
        """Sweep and re-embed, one agent of the fleet at a time, until cancelled."""
        while True:
            try:
                await self.upkeep_once()
            except self._unreachable as exc:  # the next round tries again
                log.warning("memory upkeep failed: %s", exc)
            except Exception:  # a bug must not end upkeep for the agent's lifetime
                log.exception("memory upkeep failed")
            await asyncio.sleep(UPKEEP_SECONDS)

    async def upkeep_once(self) -> None:
        """One round: settle, count, sweep if it is this agent's turn, re-embed if needed."""
        backend = self.fleet.backend
        rule = await self._trust()
        if rule.trusted is not None:
            lifted, deleted = await backend.settle(rule.trusted, rule.pending)
            if lifted or deleted:
                log.info("memory: quarantine settled, %d lifted, %d deleted", lifted, deleted)
        metrics.MEMORY_ITEMS.set(await backend.size())
        if await self._lock(self.keys.memory_sweep_lock, SWEEP_LOCK_MS):
            swept = await backend.sweep()
            if swept:
                log.info("memory: %d expired memories swept", swept)
        active = await backend.active_model()
        wanted = str(self.config.memory_model)
        if active is None or active == wanted:
            return
        if await self._lock(self.keys.memory_reembed_lock, REEMBED_LOCK_MS):
            try:
                await reembed(self.fleet, wanted, self._progress)
            finally:
                await self.client.delete(self.keys.memory_reembed_lock)

    async def aclose(self) -> None:
        """Release the backend's own connection (Redis' client is the agent's to close)."""
        if self._close is not None:
            await self._close()

    def _progress(self, progress: Progress) -> None:
        log.info("memory %s", progress)
        metrics.MEMORY_REEMBEDDED.set(progress.done)
        # Kept: the loop holds tasks only weakly.
        self._renewal = asyncio.ensure_future(
            self.client.pexpire(self.keys.memory_reembed_lock, REEMBED_LOCK_MS)
        )

    async def _lock(self, key: str, ms: int) -> bool:
        return bool(await self.client.set(key, self.config.agent_id, nx=True, px=ms))

    async def _trust(self) -> Settlement:
        now = time.monotonic()
        if self._trusted is not None and now - self._trusted[0] < TRUST_TTL_SECONDS:
            return self._trusted[1]
        raw = await self.client.hget(self.keys.fleet_state, self.keys.FLEET_SUMMARY_FIELD)
        try:
            summary = FleetSummary.model_validate_json(raw) if raw else None
        except ValidationError:
            summary = None
        rule = settlement(summary)
        self._trusted = (now, rule)
        return rule


def _fields(exc: ValidationError) -> str:
    return "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
