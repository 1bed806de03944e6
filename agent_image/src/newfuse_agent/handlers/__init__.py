"""Task handlers, pluggable by name: a task's `handler` field picks one from HANDLERS.

A handler is an async function of (input, context) returning a JSON-serialisable output; the
contract (Handler, TaskContext, HandlerError: how a failure asks for another attempt) is in
newfuse_agent.contract.
"""

from __future__ import annotations

from collections.abc import Callable

# The contract lives in a leaf module (see newfuse_agent.contract); it is re-exported here, where
# handlers have always found it.
from newfuse_agent.contract import ChatGateway, Handler, HandlerError, TaskContext

__all__ = [
    "HANDLERS",
    "ChatGateway",
    "Handler",
    "HandlerError",
    "TaskContext",
    "handler",
    "load_builtin_handlers",
]

HANDLERS: dict[str, Handler] = {}


def handler(name: str) -> Callable[[Handler], Handler]:
    """Register a handler under ``name``."""

    def register(fn: Handler) -> Handler:
        HANDLERS[name] = fn
        return fn

    return register


def load_builtin_handlers() -> dict[str, Handler]:
    """Import the built-in handlers and return the registry."""
    from newfuse_agent.handlers import (  # noqa: F401 - registration by import
        ask,
        chat,
        delegate,
        echo,
        memory,
        reduce,
        saga,
        sleep,
        workflow,
    )

    return HANDLERS
