"""The handler contract: what a task handler is given, and how it reports a failure.

A leaf module (it imports nothing from newfuse_agent, which an import-linter contract enforces) so
that everything a handler may call, the model gateway first, can raise HandlerError without
importing the handler registry, and the registry can name those services' types without importing
them: the gateway and the handlers no longer import each other.

A handler is an async function of (input, context) returning a JSON-serialisable output. Raising
HandlerError(retryable=True) asks for another attempt; any other exception is a failed attempt
too; HandlerError(retryable=False) fails the task at once. A retryable error may say when another
attempt makes sense (`retry_after`) and whether this one counted (`counts_as_attempt`: False when
the work was not even tried, e.g. the gateway's circuit breaker or rate limit refused it without
touching the network); the task runtime uses both to schedule task-level retries.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


class HandlerError(Exception):
    """A handler's failure, saying whether (and when) another attempt could succeed."""

    def __init__(
        self,
        message: str,
        *,
        retryable: bool,
        retry_after: float | None = None,
        counts_as_attempt: bool = True,
    ) -> None:
        """Fail with ``message``.

        ``retryable`` says whether to try again; ``retry_after`` is how many seconds the caller
        should wait at least before the next attempt (None: no opinion); ``counts_as_attempt`` is
        False when the work was refused before it was tried, so the attempt should not be spent.
        """
        super().__init__(message)
        if retry_after is not None and not (math.isfinite(retry_after) and retry_after >= 0):
            raise ValueError(f"retry_after must be a finite number >= 0, got {retry_after!r}")
        self.retryable = retryable
        self.retry_after = retry_after
        self.counts_as_attempt = counts_as_attempt


class InputRequired(BaseException):
    """Raised by `TaskContext.request_input` when the question has no answer yet.

    A BaseException, so a handler's own `except Exception` cannot swallow it: the task runtime
    catches it, parks the task for a person (its slot is free at once) and runs the handler again
    from the start once the question is answered.
    """

    def __init__(self, question: str, schema: dict[str, Any] | None, step: int) -> None:
        """The ``step``-th question of this run (0-based)."""
        super().__init__(question)
        self.question, self.schema, self.step = question, schema, step


class Answers:
    """The answers a task already has, handed out in the order its handler asks."""

    def __init__(self, given: tuple[Any, ...] = ()) -> None:
        """Start a run with the answers ``given`` so far."""
        self.given, self.asked = given, 0

    def next(self, question: str, schema: dict[str, Any] | None) -> Any:
        """The answer to the next question, or InputRequired."""
        step = self.asked
        self.asked += 1
        if step < len(self.given):
            return self.given[step]
        raise InputRequired(question, schema, step)


@dataclass(frozen=True)
class Call:
    """One task to run on another fleet (``namespace``: this fleet's by default)."""

    fleet: str
    handler: str
    payload: Any = None
    task_id: str | None = None  # makes the task idempotent; default: this task's id and step
    namespace: str | None = None


class DelegationRequired(BaseException):
    """Raised by `TaskContext.delegate(_all)` when the delegated tasks have not ended yet.

    The task runtime submits them, parks this task (its slot is free at once) and runs the
    handler again from the start once ``need`` of them have ended.
    """

    def __init__(self, calls: tuple[Call, ...], need: int, step: int) -> None:
        """The ``step``-th delegation of this run (0-based)."""
        super().__init__(", ".join(f"{c.fleet}: {c.handler}" for c in calls))
        self.calls, self.need, self.step = calls, need, step


@dataclass(frozen=True)
class Outcome:
    """How a delegated task ended."""

    child: str
    succeeded: bool
    output: Any = None
    error: str | None = None


class Delegations:
    """The outcomes of a task's delegations so far, in the order its handler delegates."""

    def __init__(self, given: tuple[tuple[Outcome | None, ...], ...] = ()) -> None:
        """Start a run with the outcomes ``given`` so far (one tuple per step)."""
        self.given, self.made = given, 0

    def next(self, calls: tuple[Call, ...], need: int) -> tuple[Outcome | None, ...]:
        """The next step's outcomes (None: not ended yet), or DelegationRequired."""
        if not calls:
            raise ValueError("delegate at least one task")
        if not 1 <= need <= len(calls):
            raise ValueError(f"need must be from 1 to {len(calls)}, got {need}")
        step = self.made
        self.made += 1
        if step >= len(self.given):
            raise DelegationRequired(calls, need, step)
        return self.given[step]


class ChatGateway(Protocol):
    """The model gateway as a handler sees it (newfuse_agent.gateway.GatewayClient is one)."""

    async def chat(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """Send one chat-completions request; return the gateway's JSON answer.

        Raises HandlerError when the call fails.
        """
        ...


@dataclass(frozen=True)
class Recollection:
    """A memory a recall found: its text, how close it is to the query (cosine), who wrote it."""

    id: str
    text: str
    score: float
    metadata: dict[str, str | int | float | bool]
    revision: str


class Memory(Protocol):
    """The fleet's memory as a handler sees it (newfuse_agent.memory.AgentMemory is one).

    A canary's writes are quarantined: its own agents recall them, stable agents do not until
    its rollout completes, and a rollback deletes them. Every call raises HandlerError on failure
    (retryable when the store was unreachable).
    """

    async def remember(
        self,
        text: str,
        metadata: dict[str, str | int | float | bool] | None = None,
        *,
        memory_id: str | None = None,
        ttl_seconds: float | None = None,
    ) -> str:
        """Remember ``text``; its id (``memory_id`` makes a retried task's write idempotent)."""
        ...

    async def recall(
        self, query: str, k: int = 5, where: dict[str, str | int | float | bool] | None = None
    ) -> list[Recollection]:
        """The ``k`` memories nearest ``query`` (whose metadata matches ``where``), best first."""
        ...

    async def forget(self, *memory_ids: str) -> int:
        """Forget these memories; how many existed."""
        ...


@dataclass(frozen=True)
class TaskContext:
    """What a handler may use besides its input."""

    agent_id: str
    fleet: str
    namespace: str
    revision: str
    capabilities: tuple[str, ...]
    gateway: ChatGateway | None = None
    # The fleet's memory (None in an image without the `memory` extra).
    memory: Memory | None = None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("newfuse_agent.handler"))
    answers: Answers = field(default_factory=Answers, repr=False)
    delegations: Delegations = field(default_factory=Delegations, repr=False)
    # The task this run is for (names what it delegates: workflows, sagas).
    task_id: str = ""

    async def request_input(self, question: str, schema: dict[str, Any] | None = None) -> Any:
        """Ask a person, and return their answer (valid against ``schema``, a JSON Schema).

        The task waits in `input-required` without holding this agent's slot; once answered, the
        handler runs again from the start and this call returns the answer. So ask before doing
        anything that must not happen twice, and ask the same questions in the same order.
        A rejection fails the task with the reviewer's reason.
        """
        return self.answers.next(question, schema)

    async def delegate(
        self,
        fleet: str,
        handler: str,
        payload: Any = None,
        *,
        namespace: str | None = None,
        task_id: str | None = None,
    ) -> Any:
        """Run ``handler`` on another fleet (this namespace's by default) and return its output.

        The task waits without holding this agent's slot; once the other task has ended, the
        handler runs again from the start and this call returns its output, or raises its failure
        as a HandlerError. ``task_id`` makes the delegated task idempotent (by default it is this
        task's id and the delegation's step). Delegate in the same order on every run.
        """
        call = Call(fleet, handler, payload, task_id, namespace)
        [outcome] = self.delegations.next((call,), 1)
        assert outcome is not None
        if not outcome.succeeded:
            raise HandlerError(
                f"delegated task {outcome.child} failed: {outcome.error}", retryable=False
            )
        return outcome.output

    async def delegate_all(
        self, calls: Sequence[Call], need: int | None = None
    ) -> list[Outcome | None]:
        """Run ``calls`` at once (fan-out) and wait until ``need`` of them ended (all: fan-in).

        Returns each call's Outcome, in order; None for one that had not ended when ``need`` had
        (quorum, any). Failures are outcomes, not exceptions: the handler decides.
        """
        chosen = len(calls) if need is None else need
        return list(self.delegations.next(tuple(calls), chosen))


Handler = Callable[[Any, TaskContext], Awaitable[Any]]
