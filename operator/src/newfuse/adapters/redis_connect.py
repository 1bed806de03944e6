"""One way to open an asyncio Redis client, used by the operator, the agents and the task client.

redis-py's default pool refuses a command outright ("Too many connections") once 100 are in use.
A blocking pool instead makes a burst of concurrent commands (a busy agent, a bulk submit, many
fleets reconciling at once) wait briefly for a free connection, which is the behaviour wanted.
"""

from __future__ import annotations

import redis.asyncio as aioredis

DEFAULT_MAX_CONNECTIONS = 64


def connect(
    url: str,
    *,
    timeout: float,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    pool_wait: float = 30.0,
    health_check_interval: int = 15,
) -> aioredis.Redis:
    """A client (decoded strings) whose commands give up after ``timeout`` seconds.

    ``pool_wait`` bounds how long a command waits for a free connection.
    """
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        max_connections=max_connections,
        timeout=pool_wait,
        decode_responses=True,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=health_check_interval,
    )
    return aioredis.Redis(connection_pool=pool)
