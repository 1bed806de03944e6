"""Task handlers, pluggable by name: a task's `handler` field picks one from HANDLERS.

A handler is an async function of (input, context) returning a JSON-serialisable output. Raising
HandlerError(retryable=True) asks for another attempt (up to the task's max_attempts); any other
exception is a failed attempt too; HandlerError(retryable=False) fails the task at once.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from newfuse_agent.gateway import GatewayClient


class HandlerError(Exception):
    """A handler's failure, saying whether another attempt could succeed."""

    def __init__(self, message: str, *, retryable: bool) -> None:
        """Fail with ``message``; ``retryable`` says whether to try again."""
        super().__init__(message)
        self.retryable = retryable


@dataclass(frozen=True)
class TaskContext:
    """What a handler may use besides its input."""

    agent_id: str
    fleet: str
    namespace: str
    revision: str
    capabilities: tuple[str, ...]
    gateway: GatewayClient | None = None
    log: logging.Logger = field(default_factory=lambda: logging.getLogger("newfuse_agent.handler"))


Handler = Callable[[Any, TaskContext], Awaitable[Any]]
HANDLERS: dict[str, Handler] = {}


def handler(name: str) -> Callable[[Handler], Handler]:
    """Register a handler under ``name``."""

    def register(fn: Handler) -> Handler:
        HANDLERS[name] = fn
        return fn

    return register


def load_builtin_handlers() -> dict[str, Handler]:
    """Import the built-in handlers (echo, sleep, chat) and return the registry."""
    from newfuse_agent.handlers import chat, echo, sleep  # noqa: F401 - registration by import

    return HANDLERS
