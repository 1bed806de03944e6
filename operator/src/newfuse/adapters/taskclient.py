"""The Python client of a fleet's tasks: submit, wait for or follow results, agents, dead letters.

Used by the `newfuse` CLI and by anything that submits work. Submission is idempotent on the task id
(SUBMIT_LUA), bulk submission is pipelined, and a result is read from the result index (one per
task) or followed on the result stream.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
import uuid
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any, cast

import orjson
import redis.asyncio as aioredis
from opentelemetry import trace
from pydantic import ValidationError

from newfuse.adapters.redis_connect import connect
from newfuse.tracing import current_traceparent
from newfuse.wire.envelope import MessageType, decode, encode
from newfuse.wire.keys import FleetKeys
from newfuse.wire.scripts import SUBMIT_LUA
from newfuse.wire.state import StateUpdate
from newfuse.wire.tasks import PRIORITY_ORDER, DeadLetter, Priority, ResultPayload, TaskPayload

tracer = trace.get_tracer("newfuse.taskclient")


class FleetNotFoundError(LookupError):
    """No fleet of that name has state in Redis (never created, or the operator is not running)."""


@dataclass(frozen=True)
class Submitted:
    """What a submission did."""

    task_id: str
    entry_id: str
    created: bool


@dataclass(frozen=True)
class TaskSpec:
    """One task to submit."""

    handler: str
    input: Any = None
    priority: Priority = Priority.NORMAL
    task_id: str | None = None
    max_attempts: int = 3
    timeout_seconds: float = 60.0


# redis-py's reply types are unions of everything; these are what XREAD/XRANGE return when decoded.
StreamEntries = list[tuple[str, dict[str, str]]]
StreamReply = list[tuple[str, StreamEntries]] | None


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


class TaskClient:
    """Talks to one fleet's streams."""

    def __init__(
        self,
        client: aioredis.Redis,
        namespace: str,
        fleet: str,
        *,
        sender: str = "newfuse-client",
        signing_key: bytes | None = None,
    ) -> None:
        """Use ``client`` (decode_responses=True) for the fleet ``namespace/fleet``."""
        self.client, self.keys = client, FleetKeys(namespace, fleet)
        self.namespace, self.fleet = namespace, fleet
        self.sender, self._key = sender, signing_key
        self._submit = client.register_script(SUBMIT_LUA)

    @classmethod
    def from_url(
        cls, url: str, namespace: str, fleet: str, *, ca_file: str | None = None, **kwargs: Any
    ) -> TaskClient:
        """A client with its own connection pool (``ca_file`` verifies a rediss:// server)."""
        client = connect(url, timeout=30, ca_file=ca_file)
        return cls(client, namespace, fleet, **kwargs)

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self.client.aclose()

    async def ensure_fleet(self) -> None:
        """Raise FleetNotFoundError unless the operator has mirrored this fleet to Redis."""
        if not await self.client.exists(self.keys.fleet_state):
            raise FleetNotFoundError(
                f"fleet {self.fleet!r} not found in namespace {self.namespace!r}: no state in "
                f"Redis (check `kubectl get nfa -n {self.namespace}` and that the operator runs)"
            )

    def _envelope(self, spec: TaskSpec) -> tuple[str, bytes]:
        """The task's id and envelope, inside its own producer span (the trace's first hop)."""
        task = TaskPayload(
            task_id=spec.task_id or uuid.uuid4().hex,
            handler=spec.handler,
            input=spec.input,
            priority=spec.priority,
            max_attempts=spec.max_attempts,
            timeout_seconds=spec.timeout_seconds,
        )
        with tracer.start_as_current_span(
            "newfuse.task.submit",
            kind=trace.SpanKind.PRODUCER,
            attributes={
                "newfuse.task_id": task.task_id,
                "newfuse.namespace": self.namespace,
                "newfuse.fleet": self.fleet,
                "newfuse.handler": task.handler,
                "messaging.system": "redis",
                "messaging.destination.name": self.keys.tasks(spec.priority),
            },
        ):
            raw = encode(
                MessageType.TASK,
                task.model_dump(mode="json"),
                self.sender,
                now=_now(),
                key=self._key,
                traceparent=current_traceparent(),
            )
        return task.task_id, raw

    async def submit(self, spec: TaskSpec) -> Submitted:
        """Enqueue one task (a task id seen before is not enqueued again)."""
        task_id, raw = self._envelope(spec)
        created, entry = await self._submit(
            keys=[self.keys.task_index, self.keys.tasks(spec.priority)], args=[task_id, raw]
        )
        return Submitted(task_id, str(entry), bool(int(created)))

    async def submit_many(
        self, specs: Iterable[TaskSpec], batch: int = 500
    ) -> AsyncIterator[list[Submitted]]:
        """Enqueue many tasks, one round trip per ``batch``; yields each batch's outcome."""
        pending: list[tuple[str, bytes, Priority]] = []

        async def flush() -> list[Submitted]:
            pipe = self.client.pipeline(transaction=False)
            for task_id, raw, priority in pending:
                await self._submit(
                    keys=[self.keys.task_index, self.keys.tasks(priority)],
                    args=[task_id, raw],
                    client=pipe,
                )
            replies = await pipe.execute()
            done = [
                Submitted(t, str(r[1]), bool(int(r[0])))
                for (t, _, _), r in zip(pending, replies, strict=True)
            ]
            pending.clear()
            return done

        for spec in specs:
            task_id, raw = self._envelope(spec)
            pending.append((task_id, raw, spec.priority))
            if len(pending) >= batch:
                yield await flush()
        if pending:
            yield await flush()

    @staticmethod
    def _result(raw: str) -> ResultPayload:
        return ResultPayload.model_validate(decode(raw, now=_now()).payload)

    async def result(self, task_id: str) -> ResultPayload | None:
        """The task's result, if it has one."""
        raw = await self.client.hget(self.keys.result_index, task_id)
        return self._result(cast(str, raw)) if raw else None

    async def wait(self, task_id: str, timeout: float) -> ResultPayload:
        """Wait up to ``timeout`` seconds for the task's result."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            found = await self.result(task_id)
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                raise TimeoutError(f"no result for task {task_id} after {timeout:g}s")
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.5)

    async def follow(
        self, since: str = "$", block_ms: int = 1000
    ) -> AsyncIterator[tuple[str, ResultPayload]]:
        """Yield (entry id, result) from the result stream, forever (cancel to stop)."""
        last = since
        while True:
            response = cast(
                StreamReply,
                await self.client.xread({self.keys.result_stream: last}, count=500, block=block_ms),
            )
            for _, entries in response or []:
                for entry_id, fields in entries:
                    last = entry_id
                    yield entry_id, self._result(fields["envelope"])

    async def result_count(self) -> int:
        """How many tasks have a result."""
        return int(await self.client.hlen(self.keys.result_index))

    async def backlog(self) -> dict[Priority, int]:
        """Entries in each priority stream (pending or not yet delivered)."""
        return {p: int(await self.client.xlen(self.keys.tasks(p))) for p in PRIORITY_ORDER}

    async def agents(self) -> list[StateUpdate]:
        """Every agent's latest StateUpdate."""
        raw = cast(dict[str, str], await self.client.hgetall(self.keys.agents))
        out = []
        for payload in raw.values():
            try:
                out.append(StateUpdate.model_validate_json(payload))
            except ValidationError:
                continue
        return sorted(out, key=lambda u: u.agent_id)

    async def dead_letters(self, count: int = 100) -> list[tuple[str, DeadLetter]]:
        """The newest dead letters, newest first."""
        entries = cast(
            StreamEntries, await self.client.xrevrange(self.keys.dead_letters, count=count)
        )
        return [(entry_id, DeadLetter.model_validate(fields)) for entry_id, fields in entries]

    async def requeue_dead_letter(self, entry_id: str) -> Submitted | None:
        """Submit a dead-lettered task again (attempts reset); None if it holds no valid task."""
        entries = await self.client.xrange(self.keys.dead_letters, min=entry_id, max=entry_id)
        if not entries:
            raise KeyError(f"no dead letter {entry_id}")
        letter = DeadLetter.model_validate(entries[0][1])
        try:
            task = TaskPayload.model_validate(orjson.loads(letter.raw)["payload"])
        except (orjson.JSONDecodeError, KeyError, TypeError, ValidationError):
            return None
        # A requeue is a deliberate second chance: forget the old failed result and submission.
        await self.client.hdel(self.keys.result_index, task.task_id)
        await self.client.hdel(self.keys.task_index, task.task_id)
        submitted = await self.submit(
            TaskSpec(
                task.handler,
                task.input,
                task.priority,
                task.task_id,
                task.max_attempts,
                task.timeout_seconds,
            )
        )
        await self.client.xdel(self.keys.dead_letters, entry_id)
        return submitted

    async def publish(self, type_: MessageType, payload: dict[str, Any]) -> int:
        """Send a system message on the coordination channel; returns how many agents heard it."""
        raw = encode(type_, payload, self.sender, now=_now(), key=self._key)
        return int(await self.client.publish(self.keys.coordination_channel, raw))
