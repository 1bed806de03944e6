"""Webhook delivery: each event of a task with webhooks, POSTed, signed, retried, dead-lettered.

Deliveries read the fleet's event stream through one consumer group shared by every gateway
replica, so each event is delivered by one replica, and one that dies mid-delivery leaves the
entry pending for another to claim: delivery is at least once. The body is the A2A
StreamResponse with the task as it stands; the signature follows Standard Webhooks
(`webhook-id`, `webhook-timestamp`, `webhook-signature: v1,<base64 HMAC-SHA256>`) keyed with the
config's token, which the receiver chose, so it can check the body is ours and fresh. A call that
fails with a network error, 408, 429 or 5xx is retried with exponential backoff (tenacity);
after the last try, or at once for another 4xx, it leaves a dead-letter record.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import httpx
import redis.asyncio as aioredis
from a2a.types.a2a_pb2 import StreamResponse
from google.protobuf.json_format import MessageToDict
from pydantic import ValidationError
from redis.exceptions import RedisError, ResponseError
from tenacity import AsyncRetrying, retry_if_exception_type, stop_after_attempt, wait_exponential

from newfuse.adapters.streamread import RAW, read_entries, text
from newfuse.fleetapi.a2amap import PushTarget, TaskRecord, task_of
from newfuse.fleetapi.fleets import Fleet, Fleets
from newfuse.fleetapi.metrics import PUSHES
from newfuse.fleetapi.pushconfig import Screen
from newfuse.wire.keys import A2A_PUSH_FLEETS, A2A_PUSH_GROUP

log = logging.getLogger(__name__)
DISCOVER_SECONDS: Final = 2.0
CLAIM_IDLE_MS: Final = 120_000  # a replica gone this long: its pending deliveries are taken over
IN_FLIGHT: Final = 64
DEAD_MAX: Final = 10_000


class RetryableError(Exception):
    """The receiver may take it on a later try."""


class RefusedError(Exception):
    """The receiver refused it for good (a 4xx other than 408 and 429), or the screen did."""


def signature(token: str, message_id: str, timestamp: int, body: bytes) -> str:
    """The `webhook-signature` value of ``body`` (Standard Webhooks, v1)."""
    signed = f"{message_id}.{timestamp}.".encode() + body
    digest = hmac.new(token.encode(), signed, hashlib.sha256).digest()
    return "v1," + base64.b64encode(digest).decode()


def headers(target: PushTarget, message_id: str, timestamp: int, body: bytes) -> dict[str, str]:
    """What a delivery sends beside its body."""
    out = {
        "Content-Type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
    }
    if target.token:
        out["X-A2A-Notification-Token"] = target.token
        out["webhook-signature"] = signature(target.token, message_id, timestamp, body)
    if target.scheme and target.credentials:
        out["Authorization"] = f"{target.scheme} {target.credentials}"
    return out


@dataclass(frozen=True)
class PushSettings:
    """How hard a delivery tries."""

    attempts: int = 5
    backoff_seconds: float = 1.0
    timeout_seconds: float = 10.0


class Pusher:
    """Delivers the webhooks of every fleet listed in A2A_PUSH_FLEETS."""

    def __init__(
        self,
        client: aioredis.Redis,
        fleets: Fleets,
        screen: Screen,
        settings: PushSettings,
        consumer: str,
    ) -> None:
        """Read through ``client`` as ``consumer``; check each URL with ``screen`` again."""
        self.client, self.fleets, self.screen = client, fleets, screen
        self.settings, self.consumer = settings, consumer
        self.http = httpx.AsyncClient(timeout=settings.timeout_seconds)
        self._gate = asyncio.Semaphore(IN_FLIGHT)
        self._consumers: dict[str, asyncio.Task[None]] = {}

    async def run(self) -> None:
        """Find fleets with webhooks, and keep one consumer running for each."""
        while True:
            try:
                for member in await self.client.smembers(A2A_PUSH_FLEETS):
                    name = str(member)
                    running = self._consumers.get(name)
                    if running is None or running.done():
                        self._consumers[name] = asyncio.create_task(self._consume(name))
            except (RedisError, OSError) as exc:
                log.warning("listing fleets with webhooks: %s", exc)
            await asyncio.sleep(DISCOVER_SECONDS)

    async def aclose(self) -> None:
        """Stop every consumer; close the HTTP client."""
        for task in self._consumers.values():
            task.cancel()
        await self.http.aclose()

    async def _consume(self, name: str) -> None:
        namespace, _, fleet_name = name.partition("/")
        found = await self.fleets.lookup(namespace, fleet_name)
        if found is None:
            return  # the run loop tries again while the fleet stays listed
        fleet, stream = found.fleet, found.fleet.tasks.keys.a2a_events
        cursor = "0"  # this consumer's own pending entries first (a restart), then new ones
        while True:
            try:
                await self._claim(fleet, stream)
                reply = await self.client.execute_command(
                    "XREADGROUP", "GROUP", A2A_PUSH_GROUP, self.consumer, "COUNT", 50,
                    "BLOCK", 2000, "STREAMS", stream, cursor, **RAW,
                )  # type: ignore[no-untyped-call]  # fmt: skip
            except ResponseError as exc:
                if "NOGROUP" in str(exc):  # Redis lost it (a restart without persistence)
                    with contextlib.suppress(RedisError, OSError):
                        await fleet.store.prepare_push()
                log.warning("webhook events of %s: %s", name, exc)
                await asyncio.sleep(DISCOVER_SECONDS)
                continue
            except (RedisError, OSError) as exc:
                log.warning("webhook events of %s: %s", name, exc)
                await asyncio.sleep(DISCOVER_SECONDS)
                continue
            entries = read_entries(reply)
            if cursor == "0" and not entries:
                cursor = ">"
            for entry_id, fields in entries:
                await self._gate.acquire()
                task = asyncio.create_task(self._handle(fleet, text(entry_id), fields))
                task.add_done_callback(lambda _: self._gate.release())

    async def _claim(self, fleet: Fleet, stream: str) -> None:
        """Take over deliveries a replica left pending too long (it died)."""
        with contextlib.suppress(ResponseError):
            reply = await self.client.execute_command(
                "XAUTOCLAIM", stream, A2A_PUSH_GROUP, self.consumer, CLAIM_IDLE_MS, "0-0",
                "COUNT", 50, **RAW,
            )  # type: ignore[no-untyped-call]  # fmt: skip
            for entry_id, fields in read_entries([[stream, reply[1]]]) if reply else []:
                await self._handle(fleet, text(entry_id), fields)

    async def _handle(self, fleet: Fleet, entry_id: str, fields: Mapping[bytes, bytes]) -> None:
        task_id = text(fields.get(b"task_id") or b"")
        try:
            raw = await fleet.store.record(task_id) if task_id else None
            try:
                record = TaskRecord.model_validate_json(raw) if raw else None
            except ValidationError:  # a record nobody can read: nothing to deliver, ever
                log.warning("webhook delivery of %s: unreadable record of %s", entry_id, task_id)
                record = None
            if record is not None and record.push:
                task = task_of(task_id, record, await fleet.tasks.result(task_id))
                body = json.dumps(MessageToDict(StreamResponse(task=task))).encode()
                await asyncio.gather(
                    *(self._deliver(fleet, t, body, entry_id, task_id) for t in record.push)
                )
            await self.client.xack(fleet.tasks.keys.a2a_events, A2A_PUSH_GROUP, entry_id)
        except (RedisError, OSError) as exc:  # left pending: claimed and tried again later
            log.warning("webhook delivery of %s: %s", entry_id, exc)

    async def _deliver(
        self, fleet: Fleet, target: PushTarget, body: bytes, entry_id: str, task_id: str
    ) -> None:
        message_id = f"{entry_id}-{target.id}"  # the same on every try: receivers can dedupe
        settings, tries = self.settings, 0
        try:
            async for attempt in AsyncRetrying(
                stop=stop_after_attempt(settings.attempts),
                wait=wait_exponential(multiplier=settings.backoff_seconds, max=60),
                retry=retry_if_exception_type(RetryableError),
                reraise=True,
            ):
                with attempt:
                    tries += 1
                    await self._post(target, body, message_id)
        except (RetryableError, RefusedError) as exc:
            PUSHES.labels("dead").inc()
            await self._dead(fleet, target, task_id, entry_id, tries, str(exc))
            return
        PUSHES.labels("delivered").inc()

    async def _post(self, target: PushTarget, body: bytes, message_id: str) -> None:
        if not await self.screen(target.url):
            raise RefusedError("the URL no longer passes the address screen")
        sent = headers(target, message_id, int(time.time()), body)
        try:
            reply = await self.http.post(target.url, content=body, headers=sent)
        except httpx.HTTPError as exc:
            raise RetryableError(f"{type(exc).__name__}: {exc}") from exc
        status = reply.status_code
        if status in (408, 429) or status >= 500:
            raise RetryableError(f"HTTP {status}")
        if status >= 400:
            raise RefusedError(f"HTTP {status}")

    async def _dead(
        self, fleet: Fleet, target: PushTarget, task_id: str, entry_id: str, tries: int, error: str
    ) -> None:
        record: dict[Any, Any] = {
            "task_id": task_id, "event": entry_id, "config_id": target.id,
            "url": target.url, "attempts": tries, "error": error[:500],
        }  # fmt: skip
        log.warning("webhook %s of task %s given up after %d tries: %s",
                    target.url, task_id, tries, error)  # fmt: skip
        await self.client.xadd(
            fleet.tasks.keys.a2a_push_dead, record, maxlen=DEAD_MAX, approximate=True
        )
