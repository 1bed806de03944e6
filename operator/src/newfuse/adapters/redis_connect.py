"""One way to open an asyncio Redis client, used by the operator, the agents and the task client.

redis-py's default pool refuses a command outright ("Too many connections") once 100 are in use.
A blocking pool instead makes a burst of concurrent commands (a busy agent, a bulk submit, many
fleets reconciling at once) wait briefly for a free connection, which is the behaviour wanted.
"""

from __future__ import annotations

from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis

DEFAULT_MAX_CONNECTIONS = 64


def redacted(url: str) -> str:
    """``url`` without its password, for logs and error messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = f"{parts.username}:" if parts.username else ":"
    host = parts.hostname or ""
    netloc = f"{user}***@{host}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def has_password(url: str) -> bool:
    """True if ``url`` carries a password (so it belongs in a Secret, not a plain env value)."""
    return urlsplit(url).password is not None


def connect(
    url: str,
    *,
    timeout: float,
    max_connections: int = DEFAULT_MAX_CONNECTIONS,
    pool_wait: float = 30.0,
    health_check_interval: int = 15,
    ca_file: str | None = None,
    encoding_errors: str = "strict",
) -> aioredis.Redis:
    """A client (decoded strings) whose commands give up after ``timeout`` seconds.

    ``pool_wait`` bounds how long a command waits for a free connection. ``ca_file`` is the PEM
    bundle that verifies a rediss:// server (default: the system's trust store). ACL users and
    passwords come in the URL itself. A rediss:// server's certificate must match its host name.
    ``encoding_errors="replace"`` lets a reader of streams that anybody can write survive bytes
    that are not UTF-8 (the message is then refused, not the read).
    """
    tls: dict[str, str | bool] = {}
    if url.startswith("rediss"):
        # Explicit, not redis-py's default: 5.x skipped the check (pyproject also requires >= 6.2,
        # where the default became True), and a certificate valid for any other name would do.
        tls["ssl_check_hostname"] = True
        if ca_file:
            tls["ssl_ca_certs"] = ca_file
    pool = aioredis.BlockingConnectionPool.from_url(
        url,
        **tls,
        max_connections=max_connections,
        timeout=pool_wait,
        decode_responses=True,
        encoding_errors=encoding_errors,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=health_check_interval,
    )
    return aioredis.Redis(connection_pool=pool)
