"""Context for log lines: which namespace, fleet, revision or task a line is about.

Every JSON log line written while reconciling a fleet or handling a task carries those ids as
fields, without every call site passing `extra=`: the worker binds them once (a contextvar, so
concurrent reconciles and tasks on one event loop never mix them up) and a logging filter copies
them onto each record. Log shippers can then select one fleet's or one task's lines exactly.
"""

from __future__ import annotations

import contextvars
import logging
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from types import MappingProxyType

_FIELDS: contextvars.ContextVar[Mapping[str, str]] = contextvars.ContextVar(
    "newfuse_log_fields", default=MappingProxyType({})
)


@contextmanager
def bound(**fields: str | None) -> Iterator[None]:
    """Add ``fields`` (None values are skipped) to every log line written inside the block."""
    token = _FIELDS.set({**_FIELDS.get(), **{k: v for k, v in fields.items() if v is not None}})
    try:
        yield
    finally:
        _FIELDS.reset(token)


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record (a field given in `extra=` wins)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Annotate ``record``; never drops it."""
        for name, value in _FIELDS.get().items():
            if not hasattr(record, name):
                setattr(record, name, value)
        return True
