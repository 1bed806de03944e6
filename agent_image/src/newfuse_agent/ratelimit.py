"""The fleet-wide gateway rate limit: one token bucket in Redis, shared by every agent of a fleet.

A model gateway's quota belongs to the fleet, not to one pod, so a per-process limiter would let a
fleet of N agents send N times the allowed rate. The bucket lives in a Redis hash
(`FleetKeys.rate_limit`, fields `tokens` and `ts`) and is refilled and spent by Lua scripts, so
concurrent agents never race on it, and the scripts read Redis `TIME` so that every agent is
measured against one clock instead of its own (pods' clocks drift).

Reserving, not polling: a caller takes a token even when the balance is below zero and is told
when its token will be there (its slot); it sleeps exactly that long and goes. No retry storm when
many agents wait at once, and waiters are served in the order they asked. While the balance is
below zero the slots are 1/rate apart, so what the bucket grants never exceeds its rate plus one
burst of `capacity`, in any window.

That alone has a failure mode under overload, which this module avoids. A caller cancelled while it
waits (its task timed out) would keep its reserved token: the balance then runs ever further below
zero, every new caller is scheduled behind slots nobody will use, waits longer than any caller's
timeout and is cancelled in turn. Goodput falls to zero and stays there after the load stops, until
the debt has run off. So:
- a reservation never waits longer than `max_wait`: if its slot would be later, no token is taken
  and RateLimitedError says how long the wait would have been (the gateway turns it into a
  retryable HandlerError with that `retry_after`);
- a caller cancelled before its slot gives the slot back (RELEASE_LUA, run to completion even
  though the caller is cancelled): the slot goes into a sorted set of free slots
  (`<bucket key>:holes`), and the next caller takes the earliest free slot that is not yet due
  before it makes a new one. Each slot is still used at most once, so the bound above holds, and a
  call after a burst of abandoned waiters starts within one slot (1/rate), not after their debt.
A free slot that falls due unused is dropped: that token is lost, the limit errs on the side of
sending less, never more.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from typing import Any, Final

import redis.asyncio as aioredis
from prometheus_client import Histogram

log = logging.getLogger(__name__)

# A caller waits at most this long for its slot unless told otherwise: a gateway request's default
# timeout, since a slot further out would outlast the request it is for.
DEFAULT_MAX_WAIT_SECONDS: Final = 30.0
HOLES_SUFFIX: Final = ":holes"

# KEYS: the bucket hash, the sorted set of free (given-back) slots. ARGV: refill rate (tokens per
# second), capacity (tokens), longest wait (seconds). Returns {granted, wait, slot}: granted is 1
# or 0 (refused: nothing taken), wait the seconds until the slot, slot its time on Redis's clock.
# Numbers are strings, since Lua numbers become integers in replies.
RESERVE_LUA: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
local max_wait = tonumber(ARGV[3])
local stored = redis.call('HMGET', KEYS[1], 'tokens', 'ts')
local tokens = tonumber(stored[1])
local last = tonumber(stored[2])
if tokens == nil or last == nil then
  tokens = capacity
elseif now > last then
  tokens = math.min(capacity, tokens + (now - last) * rate)
else
  -- Redis's clock went back (a failover): refill nothing until it passes the stored time again.
  now = last
end
-- A free slot already due went unused: its token is lost.
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. string.format('%.6f', now))
local free = redis.call('ZRANGE', KEYS[2], 0, 0, 'WITHSCORES')
if free[1] then
  -- Free slots lie before the newest reservation's, so the earliest is the soonest there is.
  local wait = tonumber(free[2]) - now
  if wait > max_wait then return {0, string.format('%.6f', wait), ''} end
  redis.call('ZREM', KEYS[2], free[1])
  return {1, string.format('%.6f', wait), free[1]}
end
tokens = tokens - 1
local wait = 0
if tokens < 0 then wait = -tokens / rate end
if wait > max_wait then return {0, string.format('%.6f', wait), ''} end
redis.call('HSET', KEYS[1],
  'tokens', string.format('%.17g', tokens), 'ts', string.format('%.6f', now))
-- A full bucket says nothing a missing key does not, so the key goes away once it would be full.
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + 1000)
return {1, string.format('%.6f', wait), string.format('%.6f', now + wait)}
"""

# KEYS: the sorted set of free slots. ARGV: the slot given back (as RESERVE_LUA returned it).
# Returns 1 if the slot was not yet due and is free for the next caller, 0 if it was too late.
RELEASE_LUA: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local slot = tonumber(ARGV[1])
if slot == nil or slot <= now then return 0 end
redis.call('ZADD', KEYS[1], slot, ARGV[1])
local latest = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('PEXPIRE', KEYS[1], math.ceil((tonumber(latest[2]) - now) * 1000) + 1000)
return 1
"""

RATE_LIMIT_WAIT_SECONDS = Histogram(
    "newfuse_agent_rate_limit_wait_seconds",
    "Time a gateway request waited for the fleet-wide rate limiter.",
    buckets=(0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)


class RateLimitedError(Exception):
    """The fleet's next free slot is further out than the caller may wait; no token was taken."""

    def __init__(self, wait: float, max_wait: float) -> None:
        """``wait``: seconds until the slot this call would have had (over ``max_wait``)."""
        super().__init__(
            f"fleet rate limit: the next slot is {wait:.2f}s away, "
            f"more than the {max_wait:g}s a call may wait"
        )
        self.wait = wait
        self.max_wait = max_wait


@dataclass(frozen=True)
class Reservation:
    """A slot taken from the bucket: use it after ``wait`` seconds, or give it back."""

    wait: float
    # The slot's time on Redis's clock, exactly as the script wrote it (it names the slot when it
    # is given back).
    slot: str


def holes_key(bucket_key: str) -> str:
    """The sorted set of free slots that goes with the bucket at ``bucket_key``."""
    return bucket_key + HOLES_SUFFIX


def _check_wait(name: str, value: float) -> float:
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}")
    return value


class RedisTokenBucket:
    """A token bucket in Redis: ``rate_per_second`` tokens a second, bursts of ``capacity``.

    The capacity is the rate (at least one token), so a fleet may send one second's worth of
    requests at once after a quiet spell, and never more than that.
    """

    def __init__(
        self,
        client: aioredis.Redis,
        key: str,
        rate_per_second: float,
        *,
        max_wait_seconds: float = DEFAULT_MAX_WAIT_SECONDS,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Limit to ``rate_per_second`` through the hash at ``key`` on ``client``.

        A caller waits at most ``max_wait_seconds`` for its slot (see ``acquire``).
        """
        if not math.isfinite(rate_per_second) or rate_per_second <= 0:
            raise ValueError(f"rate_per_second must be a positive number, got {rate_per_second!r}")
        self.key = key
        self.holes_key = holes_key(key)
        self.rate = rate_per_second
        self.capacity = max(1.0, rate_per_second)
        self.max_wait = _check_wait("max_wait_seconds", max_wait_seconds)
        self._reserve = client.register_script(RESERVE_LUA)
        self._release = client.register_script(RELEASE_LUA)
        self._sleep = sleep
        # Give-backs still running after their caller was cancelled (kept so they are not lost).
        self._giving_back: set[asyncio.Task[None]] = set()

    async def reserve(self, max_wait: float | None = None) -> Reservation:
        """Take a slot no more than ``max_wait`` seconds away (default: the bucket's max_wait).

        Raises RateLimitedError (nothing taken) when the next slot is further out, and
        redis.exceptions.RedisError when Redis cannot be asked.
        """
        limit = self.max_wait if max_wait is None else _check_wait("max_wait", max_wait)
        granted, raw_wait, slot = await self._reserve(
            keys=[self.key, self.holes_key],
            args=[repr(self.rate), repr(self.capacity), repr(limit)],
        )
        wait = max(0.0, float(raw_wait))
        if not int(granted):
            raise RateLimitedError(wait, limit)
        return Reservation(wait, slot.decode() if isinstance(slot, bytes) else str(slot))

    async def release(self, reservation: Reservation) -> bool:
        """Give an unused slot back; True if it was not yet due, so another caller may use it.

        Once per reservation, and only if it will not be used: a slot given back is someone
        else's (acquire does this itself for a cancelled caller).
        """
        returned = await self._release(keys=[self.holes_key], args=[reservation.slot])
        return bool(int(returned))

    async def acquire(self, max_wait: float | None = None) -> float:
        """Wait until this caller may send one request; return the seconds waited.

        Waits at most ``max_wait`` seconds (default: the bucket's); raises RateLimitedError at
        once, taking nothing, when the next slot is further out. A caller cancelled before its
        slot gives it back, so an abandoned wait costs the fleet nothing.
        Raises redis.exceptions.RedisError when Redis cannot be asked.
        """
        # Shielded: a cancellation while the script runs must not lose track of a slot it took.
        reserving = asyncio.ensure_future(self.reserve(max_wait))
        try:
            reservation = await asyncio.shield(reserving)
        except asyncio.CancelledError:
            await self._finish_giving_back(self._give_back_once_reserved(reserving))
            raise
        if reservation.wait > 0:
            try:
                await self._sleep(reservation.wait)
            except asyncio.CancelledError:
                await self._finish_giving_back(self._give_back(reservation))
                raise
        RATE_LIMIT_WAIT_SECONDS.observe(reservation.wait)
        return reservation.wait

    async def _finish_giving_back(self, give_back: Coroutine[Any, Any, None]) -> None:
        # Run to completion even if the caller is cancelled again meanwhile; it is kept in a set
        # so that it is not garbage-collected while it runs on its own.
        task = asyncio.ensure_future(give_back)
        self._giving_back.add(task)
        task.add_done_callback(self._giving_back.discard)
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.shield(task)

    # The give-backs never raise: they run while a CancelledError is on its way up, which no
    # error of theirs may replace.

    async def _give_back_once_reserved(self, reserving: asyncio.Future[Reservation]) -> None:
        try:
            reservation = await reserving
        except Exception:
            return  # refused, or failed: nothing is known to have been taken
        await self._give_back(reservation)

    async def _give_back(self, reservation: Reservation) -> None:
        try:
            await self.release(reservation)
        except Exception as exc:
            # The slot stays taken: the fleet sends one request less, never one more.
            log.warning("could not give back a rate-limit slot: %r", exc)
