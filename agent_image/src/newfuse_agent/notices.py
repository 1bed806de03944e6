"""The coordination channel: drain, reload and ping notices, each signed one taken once.

Pub/sub, not a stream: drain, reload and ping are notices about the present. A missed one loses
nothing (a drain is also delivered as SIGTERM by Kubernetes, a ping is re-sent), so they need
neither persistence nor acknowledgement. A signed notice is taken at most once, even if captured
and published again while fresh.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import os
from collections.abc import Callable
from typing import Any

from redis.exceptions import RedisError

from newfuse.wire.envelope import (
    MAX_CLOCK_SKEW,
    MessageRejectedError,
    MessageType,
    RejectReason,
    decode,
    encode,
)
from newfuse.wire.signing import Channel
from newfuse_agent import metrics
from newfuse_agent.config import AgentConfig
from newfuse_agent.queue import TaskQueue

log = logging.getLogger("newfuse_agent")


class Notices:
    """Listens on one agent's coordination channel and acts on what is addressed to it."""

    def __init__(
        self,
        config: AgentConfig,
        queue: TaskQueue,
        clock: Callable[[], dt.datetime],
        drain: Callable[[], None],
        pong: Callable[[], dict[str, Any]],
    ) -> None:
        """Act for ``config``'s agent: ``drain`` starts its drain, ``pong`` is its ping answer."""
        self.config, self.queue, self.clock = config, queue, clock
        self.drain, self.pong = drain, pong
        self.client, self.keys = queue.client, queue.keys
        self._signing = config.signing

    async def listen(self, draining: asyncio.Event) -> None:
        """Subscribe, and resubscribe after an outage, until ``draining`` is set."""
        while not draining.is_set():
            pubsub = self.client.pubsub()
            try:
                await pubsub.subscribe(self.keys.coordination_channel)
                async for message in pubsub.listen():
                    if message.get("type") == "message":
                        await self._on_notice_safely(message["data"])
            except (RedisError, OSError) as exc:
                if draining.is_set():
                    return
                log.warning("coordination channel lost (%s), resubscribing", exc)
                await asyncio.sleep(1.0)
            finally:
                with contextlib.suppress(RedisError, OSError, TimeoutError):
                    await asyncio.wait_for(pubsub.aclose(), 2)  # type: ignore[no-untyped-call]

    async def _on_notice_safely(self, raw: Any) -> None:
        try:
            await self.on_notice(raw)
        except (RedisError, OSError):
            raise
        except Exception:  # no message may kill the listener
            metrics.REJECTED.labels("invalid_envelope").inc()
            log.exception("a coordination message could not be handled")

    async def on_notice(self, raw: str | bytes) -> None:
        """Act on one message of the channel (refused and counted if it is not a usable one)."""
        if len(raw) > self.config.tasks.max_payload_bytes:
            metrics.REJECTED.labels("oversize").inc()
            log.warning("refused a coordination message of %d bytes", len(raw))
            return
        try:
            envelope = decode(
                raw,
                keyring=self._signing.keyring,
                audience=self.keys.audience(Channel.COORDINATION),
                require_signature=self.config.require_signatures,
                now=self.clock(),
                max_skew=dt.timedelta(seconds=self.config.tasks.max_clock_skew_seconds),
            )
            if envelope.metadata.signature is not None:
                await self._take_once(envelope.metadata.message_id)
        except MessageRejectedError as exc:
            metrics.REJECTED.labels(exc.reason).inc()
            log.warning("refused a coordination message: %s", exc)
            return
        target = str(envelope.payload.get("target", "*"))
        if target not in ("*", self.config.agent_id, f"revision:{self.config.revision}"):
            return
        if envelope.type is MessageType.DRAIN:
            log.info("drain notice from %s", envelope.metadata.sender)
            self.drain()
        elif envelope.type is MessageType.PING:
            pong = encode(
                MessageType.PONG,
                self.pong(),
                self.config.agent_id,
                now=self.clock(),
                audience=self.keys.audience(Channel.COORDINATION),
                signer=self._signing.signer,
            )
            await self.client.publish(self.keys.coordination_channel, pong)
        elif envelope.type is MessageType.RELOAD:
            level = envelope.payload.get("log_level")
            if isinstance(level, str) and level.upper() in logging.getLevelNamesMapping():
                logging.getLogger().setLevel(level.upper())
            log.info("reloaded", extra={"payload": envelope.payload})

    async def _take_once(self, message_id: str) -> None:
        # A broadcast leaves no stream entry to acknowledge, so a captured notice could be
        # published again while fresh; remembering it in Redis outlives this process's restarts.
        seen = self.keys.coordination_seen_field(self.config.agent_id, message_id)
        fresh_for = 2 * MAX_CLOCK_SKEW.total_seconds()  # ahead by the skew, behind by the age
        taking = f"{self.config.consumer}:{os.urandom(16).hex()}"
        if await self.queue.guard(seen, taking, fresh_for) != taking:
            raise MessageRejectedError(RejectReason.REPLAYED, f"message {message_id} was taken")
