"""Commands packed in C: redis-py's asyncio connections pack every argument in Python.

An agent's result step is one script call of about twenty arguments, and packing them was the
largest single cost of a short task in redis-py (its synchronous client already uses hiredis for
this; the asyncio one does not). `packing(cls)` is ``cls`` with hiredis' packer. Anything hiredis
refuses (a type or a string it will not encode) goes through redis-py's own packer instead, so
what is sent, and every error raised, stays exactly redis-py's.
"""

from __future__ import annotations

from typing import Any

import hiredis
from redis.asyncio.connection import AbstractConnection

_MADE: dict[str, type[AbstractConnection]] = {}


def packing(cls: type[AbstractConnection]) -> type[AbstractConnection]:
    """``cls`` (a redis-py asyncio connection class) packing its commands with hiredis."""
    key = f"{cls.__module__}.{cls.__qualname__}"
    if key not in _MADE:
        _MADE[key] = _subclass(cls)
    return _MADE[key]


def _subclass(cls: type[AbstractConnection]) -> type[AbstractConnection]:

    def pack_command(self: AbstractConnection, *args: Any) -> list[bytes]:
        try:
            return [hiredis.pack_command(_split_name(args))]
        except (TypeError, ValueError):  # UnicodeEncodeError is a ValueError
            return cls.pack_command(self, *args)

    return type(f"Hiredis{cls.__name__}", (cls,), {"pack_command": pack_command})


def _split_name(args: tuple[Any, ...]) -> tuple[Any, ...]:
    # A command name may carry its subcommand ("CONFIG GET"): the server wants them apart.
    name = args[0]
    if isinstance(name, str) and " " in name:
        return (*name.encode().split(), *args[1:])
    if isinstance(name, bytes) and b" " in name:
        return (*name.split(), *args[1:])
    return args
