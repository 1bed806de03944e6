"""One way to open an asyncio Redis client, used by the operator, the agents and the task client.

redis-py's default pool refuses a command outright ("Too many connections") once 100 are in use.
A blocking pool instead makes a burst of concurrent commands (a busy agent, a bulk submit, many
fleets reconciling at once) wait briefly for a free connection, which is the behaviour wanted.

A URL whose scheme ends in ``+cluster`` (``redis+cluster://host:port``, ``rediss+cluster://...``)
names a Redis Cluster: any one node is enough, the client learns the others and follows the slots
as they move. Every key of a fleet shares one hash tag (newfuse.wire.keys), so each script and
transaction runs on one node. The scheme says it, not a probe of the server, so a deployment cannot
silently switch between the two.
"""

from __future__ import annotations

from collections.abc import Generator
from typing import Any, cast
from urllib.parse import urlsplit, urlunsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterPipeline, RedisCluster
from redis.commands.core import AsyncScript
from redis.typing import ScriptTextT

from newfuse.adapters.fastpack import packing

DEFAULT_MAX_CONNECTIONS = 64
CLUSTER_SUFFIX = "+cluster"


def is_cluster(url: str) -> bool:
    """True if ``url`` names a Redis Cluster (``redis+cluster://`` or ``rediss+cluster://``)."""
    return urlsplit(url).scheme.lower().endswith(CLUSTER_SUFFIX)


def _plain_scheme(url: str) -> str:
    """``url`` with ``+cluster`` taken off its scheme: what redis-py's URL parser knows."""
    parts = urlsplit(url)
    return urlunsplit(parts._replace(scheme=parts.scheme[: -len(CLUSTER_SUFFIX)]))


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

    For a cluster URL the client is a redis-py ``RedisCluster``, typed as ``Redis``: the commands,
    scripts, pipelines and pub/sub this project uses behave the same on both (checked by
    tests/integration/test_redis_cluster.py). Its pools are per node and do not wait:
    ``max_connections`` bounds each node, ``pool_wait`` does not apply.
    """
    tls: dict[str, str | bool] = {}
    if url.lower().startswith("rediss"):
        # Explicit, not redis-py's default: 5.x skipped the check (pyproject also requires >= 6.2,
        # where the default became True), and a certificate valid for any other name would do.
        tls["ssl_check_hostname"] = True
        if ca_file:
            tls["ssl_ca_certs"] = ca_file
    if is_cluster(url):
        return _connect_cluster(
            url,
            tls,
            timeout=timeout,
            max_connections=max_connections,
            health_check_interval=health_check_interval,
            encoding_errors=encoding_errors,
        )
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
    pool.connection_class = packing(pool.connection_class)
    return aioredis.Redis(connection_pool=pool)


class ClusterClient(RedisCluster):
    """A RedisCluster whose pipelines run the scripts registered with it.

    redis-py's cluster pipeline refuses `evalsha` outright, and could not load a script on the
    node a call lands on anyway (a promoted replica or a restarted node has none). A script
    registered here is sent in a pipeline by its text (EVAL): the node compiles it once and
    caches it under the same SHA, so no call can fail with NOSCRIPT.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        """RedisCluster's, plus the texts of registered scripts by SHA."""
        super().__init__(*args, **kwargs)
        self.script_texts: dict[str, ScriptTextT] = {}

    # redis-py's async cluster returns an AsyncScript, though its type stubs say the sync Script.
    def register_script(self, script: ScriptTextT) -> AsyncScript:  # type: ignore[override]
        """redis-py's Script, its text kept for pipelines."""
        registered = super().register_script(script)
        self.script_texts[registered.sha] = registered.script
        return registered

    def pipeline(
        self, transaction: Any | None = None, shard_hint: Any | None = None
    ) -> ClusterPipeline:
        """A pipeline that runs registered scripts (a transaction: one slot's keys only)."""
        if shard_hint:
            return super().pipeline(transaction, shard_hint)  # redis-py's refusal
        # redis-py declares an attribute abstract that its own ClusterPipeline sets at run time.
        return ScriptingClusterPipeline(self, transaction)  # type: ignore[abstract]


class ScriptingClusterPipeline(ClusterPipeline):
    """A cluster pipeline whose `evalsha` of a registered script sends the script (EVAL)."""

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> Any:
        """Queue the script call; routed, like any command, by its keys' slot.

        What it returns may be awaited (a Script called with ``client=pipe`` does) and gives the
        pipeline back: awaiting the pipeline itself would empty its queue.
        """
        text = getattr(self.cluster_client, "script_texts", {}).get(sha)
        command = ("EVALSHA", sha) if text is None else ("EVAL", text)
        self.execute_command(*command, numkeys, *keys_and_args)
        return _Queued(self)


class _Queued:
    """An awaitable of the pipeline a command was queued on, that leaves its queue alone."""

    def __init__(self, pipe: ClusterPipeline) -> None:
        self.pipe = pipe

    def __await__(self) -> Generator[Any, None, ClusterPipeline]:
        return _same(self.pipe).__await__()


async def _same(pipe: ClusterPipeline) -> ClusterPipeline:
    return pipe


def _connect_cluster(
    url: str,
    tls: dict[str, str | bool],
    *,
    timeout: float,
    max_connections: int,
    health_check_interval: int,
    encoding_errors: str,
) -> aioredis.Redis:
    client = ClusterClient.from_url(
        _plain_scheme(url),
        **tls,
        max_connections=max_connections,
        decode_responses=True,
        encoding_errors=encoding_errors,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        health_check_interval=health_check_interval,
    )
    # The cast is the one place the two kinds of client meet: every caller takes a Redis.
    return cast(aioredis.Redis, client)
