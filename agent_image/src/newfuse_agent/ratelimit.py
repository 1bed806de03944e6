"""The fleet-wide gateway rate limit: one token bucket in Redis, shared by every agent of a fleet.

A model gateway's quota belongs to the fleet, not to one pod, so a per-process limiter would let a
fleet of N agents send N times the allowed rate. The bucket lives in a Redis hash
(`FleetKeys.rate_limit`, fields `tokens` and `ts`) and is refilled and spent by one Lua script, so
concurrent agents never race on it, and the script reads Redis `TIME` so that every agent is
measured against one clock instead of its own (pods' clocks drift).

The script reserves: it always takes a token, letting the balance go negative, and answers how
long the caller must wait until that token would have been there. The caller sleeps exactly that
long and is done: no polling, no retry storm when many agents wait at once, and waiting callers
are served in the order they asked (nobody starves). A caller cancelled while it waits has spent
its token; the limit errs on the side of sending less, never more.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Awaitable, Callable
from typing import Final

import redis.asyncio as aioredis
from prometheus_client import Histogram

# KEYS: the bucket hash. ARGV: refill rate (tokens per second), capacity (tokens).
# Returns the seconds (a string: Lua numbers become integers in replies) until the token taken by
# this call is available; "0.000000" means at once.
RATE_LIMIT_LUA: Final = """
local clock = redis.call('TIME')
local now = tonumber(clock[1]) + tonumber(clock[2]) / 1000000
local rate = tonumber(ARGV[1])
local capacity = tonumber(ARGV[2])
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
tokens = tokens - 1
local wait = 0
if tokens < 0 then wait = -tokens / rate end
redis.call('HSET', KEYS[1],
  'tokens', string.format('%.17g', tokens), 'ts', string.format('%.6f', now))
-- A full bucket says nothing a missing key does not, so the key goes away once it would be full.
redis.call('PEXPIRE', KEYS[1], math.ceil((capacity - tokens) / rate * 1000) + 1000)
return string.format('%.6f', wait)
"""

RATE_LIMIT_WAIT_SECONDS = Histogram(
    "newfuse_agent_rate_limit_wait_seconds",
    "Time a gateway request waited for the fleet-wide rate limiter.",
    buckets=(0.0, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0),
)


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
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        """Limit to ``rate_per_second`` through the hash at ``key`` on ``client``."""
        if not math.isfinite(rate_per_second) or rate_per_second <= 0:
            raise ValueError(f"rate_per_second must be a positive number, got {rate_per_second!r}")
        self.key = key
        self.rate = rate_per_second
        self.capacity = max(1.0, rate_per_second)
        self._script = client.register_script(RATE_LIMIT_LUA)
        self._sleep = sleep

    async def reserve(self) -> float:
        """Take one token and return how many seconds until it may be used (0: now)."""
        raw = await self._script(keys=[self.key], args=[repr(self.rate), repr(self.capacity)])
        wait = float(raw)
        return wait if wait > 0 else 0.0

    async def acquire(self) -> float:
        """Wait until this caller may send one request; return the seconds waited.

        Raises redis.exceptions.RedisError when Redis cannot be asked.
        """
        wait = await self.reserve()
        if wait > 0:
            await self._sleep(wait)
        RATE_LIMIT_WAIT_SECONDS.observe(wait)
        return wait
