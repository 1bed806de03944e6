"""Opening a Redis Cluster client from a URL, and what it adds to redis-py's: no server needed.

The cluster tests (tests/integration/test_redis_cluster*.py) run the task flow on a real cluster;
these pin the pieces that decide how: the scheme, the TLS options, the breaker sharing the
client's nodes, and pipelines that send registered scripts by their text.
"""

from __future__ import annotations

from typing import Any, cast

import pytest
from redis.asyncio.cluster import RedisCluster

from localcluster.redis_cluster import parse_nodes
from newfuse.adapters.redis_connect import (
    ClusterClient,
    ScriptingClusterPipeline,
    connect,
    has_password,
    is_cluster,
    redacted,
)
from newfuse.adapters.redis_guard import (
    Breaker,
    GuardedRedis,
    GuardedRedisCluster,
    RedisCircuitOpenError,
    guard,
)
from newfuse.core.rediscircuit import failed

URL = "redis+cluster://127.0.0.1:7000/0"


@pytest.mark.parametrize(
    ("url", "cluster"),
    [
        ("redis+cluster://h:7000", True),
        ("rediss+cluster://u:p@h:7000/0", True),
        ("REDIS+CLUSTER://h:7000", True),
        ("redis://h:6379/0", False),
        ("rediss://h:6380/0", False),
        ("redis://cluster:6379/0", False),
    ],
)
def test_the_scheme_alone_says_cluster(url: str, cluster: bool) -> None:
    assert is_cluster(url) is cluster


def test_a_cluster_url_keeps_its_password_out_of_logs() -> None:
    url = "rediss+cluster://newfuse:s3cret@redis.example:6380/0"
    assert redacted(url) == "rediss+cluster://newfuse:***@redis.example:6380/0"
    assert has_password(url)


def _options(client: Any) -> dict[str, Any]:
    return cast(dict[str, Any], client.connection_kwargs)


def test_a_cluster_url_gives_a_cluster_client_with_the_same_limits() -> None:
    client = connect(URL, timeout=3, max_connections=12)
    assert isinstance(cast(object, client), ClusterClient)
    cluster = cast(ClusterClient, client)
    options = _options(cluster)
    assert (options["socket_timeout"], options["socket_connect_timeout"]) == (3, 3)
    assert options["decode_responses"] is True
    assert cluster.nodes_manager.startup_nodes.keys() == {"127.0.0.1:7000"}
    assert not options.get("ssl")


def test_a_tls_cluster_url_checks_the_host_name_against_the_given_ca() -> None:
    cluster = cast(ClusterClient, connect("rediss+cluster://h:7000", timeout=3, ca_file="/ca.pem"))
    options = _options(cluster)
    assert options["ssl_check_hostname"] is True
    assert options["ssl_ca_certs"] == "/ca.pem"


def test_a_database_other_than_0_is_refused_for_a_cluster() -> None:
    with pytest.raises(Exception, match="db"):
        connect("redis+cluster://h:7000/3", timeout=3)


def test_guard_wraps_each_kind_sharing_its_connections() -> None:
    breaker = Breaker(5)
    single = connect("redis://127.0.0.1:6379/0", timeout=3)
    assert isinstance(guard(single, breaker), GuardedRedis)
    plain = cast(ClusterClient, connect(URL, timeout=3))
    guarded = cast(GuardedRedisCluster, guard(cast(Any, plain), breaker))
    assert isinstance(cast(object, guarded), GuardedRedisCluster)
    assert guarded.nodes_manager is plain.nodes_manager
    assert guarded.breaker is breaker
    script = guarded.register_script("return 1")
    assert plain.script_texts[script.sha] == "return 1", "one registry for both"


@pytest.mark.asyncio
async def test_an_open_circuit_refuses_cluster_commands_without_calling_redis() -> None:
    breaker = Breaker(60, clock=lambda: 100.0)
    guarded = guard(connect(URL, timeout=3), breaker)
    # Nothing listens on :7000: a call that reached the network would fail differently.
    breaker.state = failed(breaker.state, 100.0, "down", 60)
    assert not breaker.closed
    with pytest.raises(RedisCircuitOpenError):
        await guarded.get("k")
    pipe = guarded.pipeline(transaction=False)
    pipe.get("k")
    with pytest.raises(RedisCircuitOpenError):
        await pipe.execute()


@pytest.mark.asyncio
async def test_a_pipeline_sends_a_registered_script_by_its_text() -> None:
    client = cast(ClusterClient, connect(URL, timeout=3))
    script = client.register_script("return redis.call('GET', KEYS[1])")
    pipe = client.pipeline(transaction=False)
    assert isinstance(pipe, ScriptingClusterPipeline)
    pipe.evalsha(script.sha, 1, "{f}k")
    # A Script called with client=pipe awaits what evalsha returns: the queue must survive it.
    assert await pipe.evalsha("0" * 40, 1, "{f}k", "arg") is pipe
    queued = [c.args for c in pipe._execution_strategy._command_queue]
    assert queued == [
        ("EVAL", "return redis.call('GET', KEYS[1])", 1, "{f}k"),
        ("EVALSHA", "0" * 40, 1, "{f}k", "arg"),
    ]
    assert isinstance(cast(object, client), RedisCluster)


def test_cluster_nodes_are_parsed_with_roles_and_slot_counts() -> None:
    text = (
        "a1 127.0.0.1:7000@17000 myself,master - 0 0 1 connected 0-5460\n"
        "b2 127.0.0.1:7001@17001 master,fail - 0 0 2 connected 5461-10922 [5462->-c3]\n"
        "c3 127.0.0.1:7002@17002 slave a1 0 0 1 connected\n"
    )
    a1, b2, c3 = parse_nodes(text)
    assert (a1.port, a1.primary, a1.failed, a1.slots) == (7000, True, False, 5461)
    assert (b2.primary, b2.failed, b2.slots) == (True, True, 5462)
    assert (c3.primary, c3.primary_id, c3.slots) == (False, "a1", 0)
