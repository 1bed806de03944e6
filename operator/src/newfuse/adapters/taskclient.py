"""The Python client of a fleet's tasks: submit, wait for or follow results, agents, dead letters.

Used by the `newfuse` CLI and by anything that submits work. Submission is idempotent on the task id
(SUBMIT_LUA), bulk submission is pipelined, and a result is read from the result index (one per
task) or followed on the result stream.

Anybody who can reach the fleet's Redis can write to its streams, so everything read back is
untrusted: replies are read as raw bytes (redis-py would otherwise fail the whole read on one value
that is not UTF-8) and every entry is decoded on its own. `follow()` skips and reports an entry
that is not a result envelope; `result()` raises MalformedResultError for one (see there why).
An envelope over the size limit is refused before anything is written, so an oversize task never
reaches an agent.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import time
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from typing import Any, Final

import redis.asyncio as aioredis
from opentelemetry import trace
from pydantic import ValidationError
from redis.commands.core import AsyncScript

from newfuse.adapters.coalesce import Arg, run_once
from newfuse.adapters.redis_connect import connect
from newfuse.adapters.streamread import (
    RAW,
    MalformedEntry,
    dead_letter_of_entry,
    is_success,
    letter_task,
    opened_letter,
    range_entries,
    read_entries,
    result_of_entry,
    text,
    verified_result,
)
from newfuse.adapters.taskerrors import (
    FleetNotFoundError,
    MalformedResultError,
    PayloadTooLargeError,
    RequeueSkippedError,
    refusing_over_budget,
)
from newfuse.adapters.taskspec import Submitted, TaskSpec
from newfuse.tracing import current_traceparent, span
from newfuse.wire.envelope import (
    SECURITY_REJECTIONS,
    MessageRejectedError,
    MessageType,
    encode,
)
from newfuse.wire.keys import FleetKeys
from newfuse.wire.sealing import TASK_CLEAR, Sealer
from newfuse.wire.signing import Channel, Signing
from newfuse.wire.state import StateUpdate
from newfuse.wire.taskpolicy import TaskPolicy
from newfuse.wire.tasks import (
    PRIORITY_ORDER,
    DeadLetter,
    Priority,
    ResultPayload,
    TaskPayload,
)
from newfuse.wire.usage import SUBMIT_BUDGETED_LUA

__all__ = ["Submitted", "TaskClient", "TaskSpec"]

tracer = trace.get_tracer("newfuse.taskclient")


DEFAULT_MAX_PAYLOAD_BYTES: Final = TaskPolicy().max_payload_bytes


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
        encryption_key: bytes | None = None,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
    ) -> None:
        """Use ``client`` (decode_responses=True) for the fleet ``namespace/fleet``.

        ``encryption_key`` (the fleet's spec.encryption key) seals what this client submits and
        opens the results and dead letters it reads.

        ``max_payload_bytes`` bounds one encoded task envelope (default: the fleet default of
        TaskPolicy, 1 MiB); a larger task is refused with PayloadTooLargeError.
        """
        if max_payload_bytes < 1:
            raise ValueError(f"max_payload_bytes must be positive, got {max_payload_bytes}")
        self.client, self.keys = client, FleetKeys(namespace, fleet)
        self.namespace, self.fleet = namespace, fleet
        self.sender, self._signing = sender, Signing.shared(signing_key)
        self._signer = self._signing.signer
        # Task id -> why its stored result was not taken (a signing client checks results).
        self.ignored: dict[str, str] = {}
        self.max_payload_bytes = max_payload_bytes
        self._submit = client.register_script(SUBMIT_BUDGETED_LUA)
        self._sealer = Sealer.of(namespace, fleet, encryption_key) if encryption_key else None

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

    async def _raw(self, *command: Any) -> Any:
        """Run ``command`` and return its reply undecoded (bytes), whatever the client decodes."""
        return await self.client.execute_command(*command, **RAW)  # type: ignore[no-untyped-call]

    async def ensure_fleet(self) -> None:
        """Raise FleetNotFoundError unless the operator has mirrored this fleet to Redis."""
        if not await self.client.exists(self.keys.fleet_state):
            raise FleetNotFoundError(
                f"fleet {self.fleet!r} not found in namespace {self.namespace!r}: no state in "
                f"Redis (check `kubectl get nfa -n {self.namespace}` and that the operator runs)"
            )

    def envelope(self, spec: TaskSpec) -> tuple[str, bytes]:
        """The task's id and envelope, inside its own producer span (the trace's first hop).

        Raises ValidationError for an invalid spec, ValueError for a naive deadline and
        PayloadTooLargeError for an envelope over the limit.
        """
        if spec.deadline is not None and spec.deadline.utcoffset() is None:
            raise ValueError("deadline must be timezone-aware (e.g. datetime.now(UTC) + ...)")
        task = TaskPayload(
            task_id=spec.task_id or os.urandom(16).hex(),
            handler=spec.handler,
            input=spec.input,
            priority=spec.priority,
            max_attempts=spec.max_attempts,
            timeout_seconds=spec.timeout_seconds,
            deadline=spec.deadline.astimezone(dt.UTC) if spec.deadline is not None else None,
            events=spec.events,
        )
        with span(
            tracer,
            "newfuse.task.submit",
            trace.SpanKind.PRODUCER,
            lambda: {
                "newfuse.task_id": task.task_id,
                "newfuse.namespace": self.namespace,
                "newfuse.fleet": self.fleet,
                "newfuse.handler": task.handler,
                "messaging.system": "redis",
                "messaging.destination.name": self.keys.tasks(spec.priority),
            },
        ):
            # Defaults left out: every reader fills them in, and they were half the envelope.
            payload = task.model_dump(mode="json", exclude_defaults=True)
            if self._sealer is not None:
                payload = self._sealer.seal_fields(payload, TASK_CLEAR, "task")
            raw = encode(
                MessageType.TASK,
                payload,
                self.sender,
                now=_now(),
                audience=self.keys.audience(Channel.TASKS),
                signer=self._signer,
                traceparent=current_traceparent(),
                protocol_version=spec.protocol_version,
            )
        if len(raw) > self.max_payload_bytes:
            raise PayloadTooLargeError(task.task_id, len(raw), self.max_payload_bytes)
        return task.task_id, raw

    async def submit(self, spec: TaskSpec) -> Submitted:
        """Enqueue one task (a task id seen before is not enqueued again)."""
        task_id, raw = self.envelope(spec)
        with refusing_over_budget(self.keys):
            created, entry = await self._submit(
                keys=self._keys(spec.priority), args=[task_id, raw, spec.major]
            )
        return Submitted(task_id, str(entry), bool(int(created)))

    def _keys(self, priority: Priority) -> list[str]:
        keys = self.keys
        return [keys.task_index, keys.tasks(priority), keys.budget, keys.usage, keys.protocol]

    async def submit_many(
        self, specs: Iterable[TaskSpec], batch: int = 500
    ) -> AsyncIterator[list[Submitted]]:
        """Enqueue many tasks, one round trip per ``batch``; yields each batch's outcome.

        Each batch is encoded (and size-checked) whole before it is sent, so an invalid or
        oversize task stops the submission with nothing of its batch written; batches yielded
        before it stay submitted.
        """
        pending: list[tuple[str, bytes, TaskSpec]] = []

        async def flush() -> list[Submitted]:
            stamped: set[str] = set()  # a protocol major is stamped once per round trip
            calls: list[tuple[AsyncScript, Sequence[Arg], Sequence[Arg]]] = []
            for task_id, raw, spec in pending:
                major = "" if spec.major in stamped else spec.major
                stamped.add(spec.major)
                calls.append((self._submit, self._keys(spec.priority), [task_id, raw, major]))
            replies = await run_once(self.client, calls)
            with refusing_over_budget(self.keys):
                for reply in replies:
                    if isinstance(reply, Exception):
                        raise reply
            done = [
                Submitted(t, str(r[1]), bool(int(r[0])))
                for (t, _, _), r in zip(pending, replies, strict=True)
            ]
            pending.clear()
            return done

        for spec in specs:
            task_id, raw = self.envelope(spec)
            pending.append((task_id, raw, spec))
            if len(pending) >= batch:
                yield await flush()
        if pending:
            yield await flush()

    async def result(self, task_id: str) -> ResultPayload | None:
        """The task's result, if it has one.

        A client with a key takes only a result the fleet signed: anything else in the index is
        ignored (noted in `ignored`) as "no result yet", since the agent replaces a result its
        fleet did not sign with its own. A client without a key cannot tell a forgery, so it
        raises MalformedResultError for anything but a valid result of this task at once, rather
        than let `wait()` time out without saying why.
        """
        raw = await self._raw("HGET", self.keys.result_index, task_id)
        if raw is None:
            return None
        keyring = self._signing.keyring
        try:
            to = self.keys.audience(Channel.RESULTS)
            return verified_result(raw, task_id, keyring, to, self._sealer)
        except MessageRejectedError as exc:
            if keyring is None:
                raise MalformedResultError(task_id, exc.reason, exc.detail) from None
            self.ignored[task_id] = f"{exc.reason}: {exc.detail}"
            return None

    async def wait(self, task_id: str, timeout: float) -> ResultPayload:
        """Wait up to ``timeout`` seconds for the task's result (MalformedResultError at once)."""
        deadline = time.monotonic() + timeout
        delay = 0.01
        while True:
            found = await self.result(task_id)
            if found is not None:
                return found
            if time.monotonic() >= deadline:
                ignored = self.ignored.get(task_id)
                also = f" (ignored a stored result: {ignored})" if ignored else ""
                raise TimeoutError(f"no result for task {task_id} after {timeout:g}s{also}")
            await asyncio.sleep(min(delay, max(0.0, deadline - time.monotonic())))
            delay = min(delay * 2, 0.5)

    async def follow(
        self,
        since: str = "$",
        block_ms: int = 1000,
        on_malformed: Callable[[MalformedEntry], None] | None = None,
    ) -> AsyncIterator[tuple[str, ResultPayload]]:
        """Yield (entry id, result) from the result stream, forever (cancel to stop).

        An entry that is not a valid result envelope is skipped and handed to ``on_malformed``;
        the watch goes on.
        """
        last = since
        if since == "$":
            # Pin "$" to an id now: re-reading "$" after an empty BLOCK would miss whatever was
            # added between two reads.
            newest = range_entries(
                await self._raw("XREVRANGE", self.keys.result_stream, "+", "-", "COUNT", 1)
            )
            last = text(newest[0][0]) if newest else "0-0"
        while True:
            reply = await self._raw(
                "XREAD", "COUNT", 500, "BLOCK", block_ms,
                "STREAMS", self.keys.result_stream, last,
            )  # fmt: skip
            for raw_id, fields in read_entries(reply):
                entry_id = last = text(raw_id)
                try:
                    result = result_of_entry(fields, self._sealer)
                except MessageRejectedError as exc:
                    if on_malformed is not None:
                        on_malformed(MalformedEntry(entry_id, exc.reason, exc.detail[:300]))
                    continue
                yield entry_id, result

    async def result_count(self) -> int:
        """How many tasks have a result."""
        return int(await self.client.hlen(self.keys.result_index))

    async def backlog(self) -> dict[Priority, int]:
        """Entries in each priority stream (pending or not yet delivered)."""
        return {p: int(await self.client.xlen(self.keys.tasks(p))) for p in PRIORITY_ORDER}

    async def agents(self) -> list[StateUpdate]:
        """Every agent's latest StateUpdate."""
        raw: dict[bytes, bytes] = await self._raw("HGETALL", self.keys.agents)
        out = []
        for payload in raw.values():
            try:
                out.append(StateUpdate.model_validate_json(payload))
            except ValidationError:
                continue
        return sorted(out, key=lambda u: u.agent_id)

    async def dead_letters(self, count: int = 100) -> list[tuple[str, DeadLetter]]:
        """The newest dead letters, newest first (an unreadable entry has reason `unreadable`)."""
        reply = await self._raw("XREVRANGE", self.keys.dead_letters, "+", "-", "COUNT", count)
        return [
            (text(raw_id), opened_letter(dead_letter_of_entry(text(raw_id), fields), self._sealer))
            for raw_id, fields in range_entries(reply)
        ]

    async def requeue_dead_letter(self, entry_id: str, *, force: bool = False) -> Submitted | None:
        """Submit a dead-lettered task again (attempts reset); None if it holds no valid task.

        The task keeps its timeout and its deadline: one past its deadline fails at once. A
        letter refused for security (unsigned, forged, unknown key, another fleet's, replayed)
        is skipped unless ``force``: requeueing signs it with this client's key. A task that has
        succeeded is never requeued, forced or not. Skips raise RequeueSkippedError.
        """
        reply = await self._raw("XRANGE", self.keys.dead_letters, entry_id, entry_id)
        entries = range_entries(reply)
        if not entries:
            raise KeyError(f"no dead letter {entry_id}")
        letter = dead_letter_of_entry(entry_id, entries[0][1])
        if letter.reason in SECURITY_REJECTIONS and not force:
            raise RequeueSkippedError(
                entry_id, f"refused as {letter.reason}: requeueing would sign it (--force to)"
            )
        task = letter_task(letter, self._sealer)
        if task is None:
            return None
        previous = await self.client.hget(self.keys.result_index, task.task_id)
        if previous is not None and is_success(previous):
            raise RequeueSkippedError(entry_id, f"task {task.task_id} has succeeded: kept")
        # A requeue is a deliberate second chance: forget the old failed result and submission.
        for index in (self.keys.result_index, self.keys.task_index):
            await self.client.hdel(index, task.task_id)
            await self.client.zrem(self.keys.expiry_of(index), task.task_id)
        spec = TaskSpec(
            task.handler,
            task.input,
            task.priority,
            task.task_id,
            task.max_attempts,
            task.timeout_seconds,
            task.deadline,
        )
        submitted = await self.submit(spec)
        await self.client.xdel(self.keys.dead_letters, entry_id)
        return submitted

    async def publish(self, type_: MessageType, payload: dict[str, Any]) -> int:
        """Send a system message on the coordination channel; returns how many agents heard it."""
        audience = self.keys.audience(Channel.COORDINATION)
        raw = encode(
            type_, payload, self.sender, now=_now(), audience=audience, signer=self._signer
        )
        return int(await self.client.publish(self.keys.coordination_channel, raw))
