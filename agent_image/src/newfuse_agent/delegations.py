"""The agent's side of delegation: park a task on a child task, resume it, break deadlocks.

- park: submit the child to its fleet (idempotent id), then park the parent (PARK_WAIT_LUA); a
  child that ended in between is caught by looking once more after parking;
- resume: whoever stores a child's result puts its parent back (Outcomes.store); the parent's
  agent reads the child's verified result and runs the handler again with it;
- sweep (every few seconds, on every agent): a wait whose child has ended is resumed (its
  notification was lost: a crash between the two steps, or a child that was not submitted by
  this parent); a wait on a task its fleet never had is failed as stalled; a wait in a cycle of
  the wait-for graph fails the cycle's youngest waiter (newfuse.core.deadlock), if it is ours.
"""

from __future__ import annotations

import logging
from typing import Final

from newfuse.adapters.streamread import verified_result
from newfuse.adapters.waits import WaitStore, keys_of
from newfuse.core import deadlock
from newfuse.core.tasklife import Fail
from newfuse.wire.delegation import (
    MAX_DELEGATION_DEPTH,
    STALL_SECONDS,
    Delegated,
    TaskRef,
    WaitRecord,
)
from newfuse.wire.envelope import (
    MessageRejectedError,
    MessageType,
    RejectReason,
    decode,
    encode,
    validate,
)
from newfuse.wire.keys import FleetKeys
from newfuse.wire.sealing import SealError, is_sealed
from newfuse.wire.signing import Channel
from newfuse.wire.tasks import CONSUMER_GROUP, FailReason, TaskPayload
from newfuse_agent import metrics
from newfuse_agent.config import AgentConfig
from newfuse_agent.contract import DelegationRequired
from newfuse_agent.metrics import TaskOutcome
from newfuse_agent.outcomes import Outcomes
from newfuse_agent.queue import Delivery

log = logging.getLogger("newfuse_agent")
SWEEP_LIMIT: Final = 200


class Delegator:
    """Delegation for one agent of one fleet."""

    def __init__(self, config: AgentConfig, store: WaitStore, out: Outcomes) -> None:
        """Write through ``store``; end tasks through ``out``."""
        self.config, self.store, self.out = config, store, out
        self.keys = FleetKeys(config.namespace, config.fleet)

    def ref(self, task_id: str) -> TaskRef:
        """A task of this fleet as a node of the wait-for graph."""
        return TaskRef(namespace=self.config.namespace, fleet=self.config.fleet, task_id=task_id)

    async def park(
        self, delivery: Delivery, task: TaskPayload, asked: DelegationRequired, trace: str | None
    ) -> None:
        """Submit the child task and wait for it, holding no slot."""
        namespace = asked.namespace or self.config.namespace
        refusal = None
        if task.depth + 1 > MAX_DELEGATION_DEPTH:
            refusal = f"a chain of {task.depth + 1} delegations (at most {MAX_DELEGATION_DEPTH})"
        elif namespace != self.config.namespace:
            refusal = f"delegation to namespace {namespace!r}: only this namespace's fleets"
        if refusal is not None:
            fail = Fail(FailReason.DELEGATION_REFUSED, refusal)
            await self.out.fail(delivery, task, fail, executed=True)
            return
        child = TaskRef(
            namespace=namespace,
            fleet=asked.fleet,
            task_id=asked.task_id or f"{task.task_id}.d{asked.step}",
        )
        envelope = self._child(task, child, asked, trace)
        await self.out.persist(lambda: self.store.submit(child, envelope, task.priority))
        record = WaitRecord(
            task_id=task.task_id, step=asked.step, child=child, depth=task.depth,
            created_at=self.out.clock(),
        )  # fmt: skip
        waiting = self.out.task_envelope(task.model_copy(update={"waiting_on": child}), trace)
        reply = await self.out.persist(
            lambda: self.store.park(
                self.keys,
                record,
                (task.priority.value, waiting),
                stream=delivery.stream,
                group=CONSUMER_GROUP,
                entry_id=delivery.entry_id,
                consumer=self.config.consumer,
            )
        )
        if reply == "parked":
            metrics.TASKS.labels(TaskOutcome.DELEGATED).inc()
            result, _ = await self.store.child_state(child)
            if result is not None:  # it ended before the wait existed: nobody resumed us
                await self.store.resume(self.ref(task.task_id), child)
        elif reply == "lost":
            metrics.TASKS.labels(TaskOutcome.LEASE_LOST).inc()

    def _child(
        self, task: TaskPayload, child: TaskRef, asked: DelegationRequired, trace: str | None
    ) -> bytes:
        payload = TaskPayload(
            task_id=child.task_id, handler=asked.handler, input=asked.payload,
            priority=task.priority, deadline=task.deadline, depth=task.depth + 1,
            parent=self.ref(task.task_id),
        )  # fmt: skip
        return encode(
            MessageType.TASK,
            payload.model_dump(mode="json"),
            self.config.agent_id,
            now=self.out.clock(),
            audience=keys_of(child).audience(Channel.TASKS),
            signer=self.config.signing.signer,
            traceparent=trace,
        )

    async def resumed(self, delivery: Delivery, task: TaskPayload) -> TaskPayload | None:
        """The task to run again, with its child's outcome; None if it ended here."""
        if task.deadlock is not None or task.stalled is not None:
            reason = FailReason.DEADLOCK if task.deadlock is not None else FailReason.STALLED
            detail = task.deadlock or task.stalled or ""
            await self.out.fail(delivery, task, Fail(reason, detail), executed=False)
            return None
        child = task.waiting_on
        assert child is not None
        raw, _ = await self.store.child_state(child)
        if raw is None:  # a resumption nobody decided (forged or hand-made): drop it
            await self.out.queue.complete(
                delivery, task.task_id, b"", succeeded=False, revision="", executed=False
            )
            return None
        outcome = self._outcome(child, raw)
        return task.model_copy(update={"delegated": [*task.delegated, outcome], "waiting_on": None})

    def _outcome(self, child: TaskRef, raw: str) -> Delegated:
        audience = keys_of(child).audience(Channel.RESULTS)
        try:
            result = verified_result(raw, child.task_id, self.config.signing.keyring, audience)
        except MessageRejectedError as exc:
            return Delegated(child=child, succeeded=False, error=f"unverifiable result: {exc}")
        return Delegated(
            child=child,
            succeeded=result.status.value == "succeeded",
            output=result.output,
            error=result.error,
        )

    async def sweep(self) -> None:
        """Resume waits whose child ended, fail stalled waits, break deadlocks."""
        now = await self.store.redis_ms()
        for task_id, _ in await self.store.open_waits(self.keys, SWEEP_LIMIT):
            me = self.ref(task_id)
            found = await self.store.wait_of(me)
            if found is None:
                continue
            record, since = found
            result, known = await self.store.child_state(record.child)
            if result is not None:
                await self.store.resume(me, record.child)
            elif not known and now - since > STALL_SECONDS * 1000:
                why = f"{record.child} does not exist on its fleet after {STALL_SECONDS:g}s"
                await self._abandon(me, stalled=why)
            else:
                await self._break_cycle(me)

    async def _break_cycle(self, start: TaskRef) -> None:
        edges: dict[str, deadlock.Edge] = {}
        node = start
        for _ in range(2 * MAX_DELEGATION_DEPTH + 2):
            found = await self.store.wait_of(node)
            if found is None:
                break
            record, since = found
            edges[str(node)] = deadlock.Edge(str(node), str(record.child), since)
            node = record.child
            if str(node) in edges:
                break
        cycle = deadlock.cycle_from(str(start), edges)
        if cycle is None:
            return
        chosen = deadlock.victim(cycle)
        if chosen.waiter != str(start):
            return  # the victim's own fleet breaks it (its agents see the same cycle)
        described = deadlock.describe(cycle)
        if await self._abandon(start, deadlock=f"waits in a cycle: {described}"):
            await self.store.record_deadlock(self.keys, described, start, chosen.since_ms)
            metrics.DEADLOCKS.inc()
            log.warning("broke a deadlock by failing %s: %s", start, described)

    async def _abandon(self, me: TaskRef, **why: str) -> bool:
        """Resume ``me`` as a copy that fails with ``why`` (once, whoever races for it)."""
        parked = await self._parked(me)
        if parked is None:
            return False
        copy = parked.model_copy(update={"waiting_on": None, **why})
        return await self.store.resume(me, envelope=self.out.task_envelope(copy, None))

    async def _parked(self, me: TaskRef) -> TaskPayload | None:
        raw = await self.store.client.hget(self.keys.waits_resume, me.task_id)
        if raw is None:
            return None
        envelope_raw = str(raw).split("\n", 2)[-1]
        try:
            envelope = decode(
                envelope_raw, keyring=self.config.signing.keyring,
                audience=self.keys.audience(Channel.TASKS), now=self.out.clock(), max_age=None,
            )  # fmt: skip
            sealer, payload = self.config.sealer, envelope.payload
            if sealer is not None and is_sealed(payload):
                payload = sealer.open_fields(payload, "task")
            return validate(TaskPayload, payload, RejectReason.INVALID_PAYLOAD, "")
        except (MessageRejectedError, SealError):
            return None
