"""The agent's side of delegation: park a task on a child task, resume it, break deadlocks.

- park: read Redis' clock (the wait's age), submit the child to its fleet (idempotent id), then
  park the parent (PARK_WAIT_LUA); a child that ended in between is caught by looking once
  more after parking;
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

from redis.exceptions import NoPermissionError

from newfuse.adapters.streamread import verified_result
from newfuse.adapters.waits import WaitStore, keys_of
from newfuse.core import deadlock
from newfuse.core.tasklife import Fail
from newfuse.wire.delegation import (
    MAX_CHILDREN,
    MAX_DELEGATION_DEPTH,
    STALL_SECONDS,
    Delegated,
    TaskRef,
    Waiting,
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
# Most waiting tasks one deadlock search reads (a cycle is found from each of its nodes).
MAX_GRAPH: Final = 1000


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
        """Submit the child tasks and wait for them, holding no slot."""
        refusal = self._refusal(task, asked)
        if refusal is not None:
            fail = Fail(FailReason.DELEGATION_REFUSED, refusal)
            await self.out.fail(delivery, task, fail, executed=True)
            return
        children = [
            TaskRef(
                namespace=call.namespace or self.config.namespace,
                fleet=call.fleet,
                task_id=call.task_id or f"{task.task_id}.d{asked.step}" + (f".{i}" if i else ""),
            )
            for i, call in enumerate(asked.calls)
        ]
        envelopes = [
            self._child(task, child, call.handler, call.payload, trace)
            for child, call in zip(children, asked.calls, strict=True)
        ]
        # Read before submitting: the children's own waits, if any, must begin after ours.
        began_ms: float = await self.out.persist(self.store.redis_ms)
        try:
            await self.out.persist(
                lambda: self.store.submit_all(children, envelopes, task.priority),
                permanent=(NoPermissionError,),
            )
        except NoPermissionError as exc:  # per-fleet Redis users: this fleet reaches its own keys
            why = f"this fleet's Redis user may not reach {children[0].fleet}'s tasks ({exc})"
            await self.out.fail(delivery, task, Fail(FailReason.DELEGATION_REFUSED, why),
                                executed=True)  # fmt: skip
            return
        waiting = Waiting(step=asked.step, children=children, need=asked.need)
        record = WaitRecord(
            task_id=task.task_id, waiting=waiting, depth=task.depth, created_at=self.out.clock()
        )
        parked = self.out.task_envelope(task.model_copy(update={"waiting_on": waiting}), trace)
        reply = await self.out.persist(
            lambda: self.store.park(
                self.keys,
                record,
                (task.priority.value, parked),
                stream=delivery.stream,
                group=CONSUMER_GROUP,
                entry_id=delivery.entry_id,
                consumer=self.config.consumer,
                began_ms=began_ms,
            )
        )
        if reply == "parked":
            metrics.outcome(TaskOutcome.DELEGATED).inc()
            # Children that ended before the wait existed resumed nobody: look once more.
            await self.store.resume_if_done(self.ref(task.task_id))
        elif reply == "lost":
            metrics.outcome(TaskOutcome.LEASE_LOST).inc()

    def _refusal(self, task: TaskPayload, asked: DelegationRequired) -> str | None:
        if task.depth + 1 > MAX_DELEGATION_DEPTH:
            return f"a chain of {task.depth + 1} delegations (at most {MAX_DELEGATION_DEPTH})"
        if len(asked.calls) > MAX_CHILDREN:
            return f"{len(asked.calls)} tasks in one delegation (at most {MAX_CHILDREN})"
        for call in asked.calls:
            if call.namespace not in (None, self.config.namespace):
                return f"delegation to namespace {call.namespace!r}: only this namespace's fleets"
        return None

    def _child(
        self, task: TaskPayload, child: TaskRef, handler: str, payload: object, trace: str | None
    ) -> bytes:
        body = TaskPayload(
            task_id=child.task_id, handler=handler, input=payload, priority=task.priority,
            deadline=task.deadline, depth=task.depth + 1, parent=self.ref(task.task_id),
        )  # fmt: skip
        return encode(
            MessageType.TASK,
            body.model_dump(mode="json"),
            self.config.agent_id,
            now=self.out.clock(),
            audience=keys_of(child).audience(Channel.TASKS),
            signer=self.config.signing.signer,
            traceparent=trace,
        )

    async def resumed(self, delivery: Delivery, task: TaskPayload) -> TaskPayload | None:
        """The task to run again, with its children's outcomes; None if it ended here."""
        if task.deadlock is not None or task.stalled is not None:
            reason = FailReason.DEADLOCK if task.deadlock is not None else FailReason.STALLED
            detail = task.deadlock or task.stalled or ""
            await self.out.fail(delivery, task, Fail(reason, detail), executed=False)
            return None
        waiting = task.waiting_on
        assert waiting is not None
        results = await self.store.results(waiting.children)
        if sum(r is not None for r in results) < waiting.need:
            # A resumption nobody made (forged or hand-made): drop it; the real one comes.
            await self.out.queue.complete(
                delivery, task.task_id, b"", succeeded=False, revision="", executed=False
            )
            return None
        outcomes = [
            None if raw is None else self._outcome(child, raw)
            for child, raw in zip(waiting.children, results, strict=True)
        ]
        return task.model_copy(
            update={"delegated": [*task.delegated, outcomes], "waiting_on": None}
        )

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
        """Resume waits whose children ended, fail stalled waits, break deadlocks."""
        now = await self.store.redis_ms()
        for task_id, _ in await self.store.open_waits(self.keys, SWEEP_LIMIT):
            me = self.ref(task_id)
            found = await self.store.wait_of(me)
            if found is None:
                continue
            record, since = found
            if await self.store.resume_if_done(me):
                continue
            missing = await self._missing(record.waiting.children)
            if missing and now - since > STALL_SECONDS * 1000:
                why = f"{missing} does not exist on its fleet after {STALL_SECONDS:g}s"
                await self._abandon(me, stalled=why)
            else:
                await self._break_cycle(me)

    async def _missing(self, children: list[TaskRef]) -> TaskRef | None:
        for child in children:
            _, known = await self.store.child_state(child)
            if not known:
                return child
        return None

    async def _break_cycle(self, start: TaskRef) -> None:
        edges: dict[str, deadlock.Edge] = {}
        frontier = [start]
        while frontier and len(edges) < MAX_GRAPH:
            node = frontier.pop()
            if str(node) in edges:
                continue
            found = await self.store.wait_of(node)
            if found is None:
                continue
            record, since = found
            children = record.waiting.children
            edges[str(node)] = deadlock.Edge(str(node), tuple(map(str, children)), since)
            frontier.extend(children)
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
        envelope_raw = await self.store.parked(me)
        if envelope_raw is None:
            return None
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
