"""What the fleet API keeps in a fleet's Redis beside its tasks: A2A task records and cancellations.

A fleet task knows its handler and input, not the A2A conversation it belongs to, so the gateway
keeps a small record per A2A task (`FleetKeys.a2a_tasks`). The first record of a task id wins,
which with the task id made from the message id makes SendMessage idempotent across gateway
replicas. A cancellation is stored as the task's result (CANCEL_LUA), so every reader, the CLI and
other gateways included, sees it the same way.
"""

from __future__ import annotations

import contextlib
import datetime as dt
from collections.abc import Sequence
from typing import Final

from pydantic import ValidationError
from redis.exceptions import ResponseError

from newfuse.adapters.taskclient import TaskClient, TaskSpec
from newfuse.adapters.taskerrors import refusing_over_budget
from newfuse.wire.envelope import MessageType, encode
from newfuse.wire.keys import A2A_PUSH_FLEETS, A2A_PUSH_GROUP
from newfuse.wire.scripts import CANCEL_LUA
from newfuse.wire.sealing import RESULT_CLEAR, Sealer
from newfuse.wire.signing import Channel, Signing
from newfuse.wire.state import FleetSummary, StateUpdate
from newfuse.wire.taskpolicy import TaskPolicy
from newfuse.wire.tasks import Priority, ResultPayload, ResultStatus
from newfuse.wire.usage import A2A_SUBMIT_BUDGETED_LUA

# Past the result's own ttl (24 h by default): a task may wait hours in a backlog before it runs.
RECORD_TTL: Final = dt.timedelta(days=7)
CANCELED: Final = "canceled"
_POLICY: Final = TaskPolicy()


class A2AStore:
    """A fleet's A2A task records, over the fleet's TaskClient (its connection and keys)."""

    def __init__(
        self,
        tasks: TaskClient,
        *,
        signing_key: bytes | None = None,
        encryption_key: bytes | None = None,
    ) -> None:
        """Keep records of ``tasks``' fleet; the keys are the fleet's, as given to ``tasks``."""
        self.tasks, self.keys = tasks, tasks.keys
        self._signer = Signing.shared(signing_key).signer
        self._cancel = tasks.client.register_script(CANCEL_LUA)
        self._submit = tasks.client.register_script(A2A_SUBMIT_BUDGETED_LUA)
        self._sealer = (
            Sealer.of(tasks.namespace, tasks.fleet, encryption_key) if encryption_key else None
        )

    async def described(self) -> tuple[Sequence[str], str | None] | None:
        """The fleet's capabilities and A2A version as the operator mirrored them.

        None: the fleet has no state. The version is None until the operator has written it.
        """
        keys = self.keys
        raw, summary = await self.tasks.client.hmget(
            keys.fleet_state, [keys.FLEET_STATE_FIELD, keys.FLEET_SUMMARY_FIELD]
        )
        if raw is None:
            return None
        try:
            capabilities = StateUpdate.model_validate_json(raw).state.capabilities
        except ValidationError:
            return None
        version = None
        if summary is not None:
            with contextlib.suppress(ValidationError):
                version = FleetSummary.model_validate_json(summary).protocol_version
        return capabilities, version

    async def submit(self, spec: TaskSpec, record: str, now: dt.datetime) -> str:
        """Enqueue ``spec`` with ``record`` unless its task has a record; return the record kept.

        Raises what `TaskClient.envelope` raises for an invalid or oversize task.
        """
        task_id, envelope = self.tasks.envelope(spec)
        expires = int((now + RECORD_TTL).timestamp() * 1000)
        keys = self.keys
        with refusing_over_budget(keys):
            kept = await self._submit(
                keys=[
                    keys.a2a_tasks,
                    keys.expiry_of(keys.a2a_tasks),
                    keys.a2a_events,
                    keys.task_index,
                    keys.tasks(spec.priority),
                    keys.budget,
                    keys.usage,
                    keys.protocol,
                ],
                args=[task_id, record, expires, _POLICY.result_stream_max, envelope, spec.major],
            )
        return str(kept)

    async def record(self, task_id: str) -> str | None:
        """The record of ``task_id``, if the gateway sent it."""
        found = await self.tasks.client.hget(self.keys.a2a_tasks, task_id)
        return None if found is None else str(found)

    async def prepare_push(self) -> None:
        """Get the fleet's webhook delivery going before a webhook is first kept.

        The event stream's consumer group (reading from now on, so every later event is
        delivered), and the fleet in the set every gateway replica delivers for.
        """
        try:
            await self.tasks.client.xgroup_create(
                self.keys.a2a_events, A2A_PUSH_GROUP, id="$", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        await self.tasks.client.sadd(A2A_PUSH_FLEETS, f"{self.tasks.namespace}/{self.tasks.fleet}")

    async def update_record(self, task_id: str, record: str) -> None:
        """Store ``record`` again: its webhooks changed.

        Last writer wins: two clients changing one task's webhooks at the same instant may lose
        one change, which the client sees when it lists them.
        """
        await self.prepare_push()
        await self.tasks.client.hset(self.keys.a2a_tasks, task_id, record)

    async def records(self, cursor: int, count: int) -> tuple[int, dict[str, str]]:
        """One HSCAN page of records: the next cursor (0 when done) and task id -> record."""
        next_cursor, found = await self.tasks.client.hscan(
            self.keys.a2a_tasks, cursor=cursor, count=count
        )
        assert isinstance(found, dict)  # HSCAN without NOVALUES: field -> value
        return int(next_cursor), {str(k): str(v) for k, v in found.items()}

    async def cancel(
        self, task_id: str, now: dt.datetime, why: str = "cancelled through the fleet API"
    ) -> bool:
        """Cancel the task unless it has a result already; True if this call cancelled it."""
        entry = await self.tasks.client.hget(self.keys.task_index, task_id)
        result = ResultPayload(
            task_id=task_id,
            status=ResultStatus.FAILED,
            error=why,
            reason=CANCELED,
            agent_id=self.tasks.sender,
            attempts=0,
            finished_at=now,
        )
        payload = result.model_dump(mode="json")
        if self._sealer is not None:
            payload = self._sealer.seal_fields(payload, RESULT_CLEAR, "result")
        envelope = encode(
            MessageType.RESULT,
            payload,
            self.tasks.sender,
            now=now,
            audience=self.keys.audience(Channel.RESULTS),
            signer=self._signer,
        )
        ttl_ms = int(_POLICY.result_ttl_seconds * 1000)
        stored = await self._cancel(
            keys=[
                self.keys.result_index,
                self.keys.result_stream,
                self.keys.counters,
                self.keys.expiry_of(self.keys.result_index),
                self.keys.expiry_of(self.keys.task_index),
                self.keys.tasks(Priority.NORMAL),
                self.keys.a2a_events,
            ],
            args=[task_id, envelope, ttl_ms, _POLICY.result_stream_max, entry or "0-0"],
        )
        return bool(stored == 1)
