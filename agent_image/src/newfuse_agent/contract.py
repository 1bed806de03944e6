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
from collections.abc import Awaitable, Callable
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


class ChatGateway(Protocol):
    """The model gateway as a handler sees it (newfuse_agent.gateway.GatewayClient is one)."""

    async def chat(self, messages: list[dict[str, str]]) -> dict[str, Any]:
        """Send one chat-completions request; return the gateway's JSON answer.

        Raises HandlerError when the call fails.
        """
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
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("newfuse_agent.handler"))


Handler = Callable[[Any, TaskContext], Awaitable[Any]]
