"""The Dramatiq side of the task benchmark: the same echo task, with Redis broker and results.

Imported by `dramatiq` worker processes (`dramatiq dramatiq_echo`) and by the benchmark, which
enqueues and waits for results. The broker URL comes from BENCH_REDIS_URL; every key starts with
BENCH_DRAMATIQ_NAMESPACE, so that the benchmark can remove its keys from a shared Redis.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
import redis
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
NAMESPACE = os.environ.get("BENCH_DRAMATIQ_NAMESPACE", "dramatiq")
# Readable result keys (<namespace>:...) instead of bare hashes, so they can be found again. No
# socket timeout: waiting for a result is a blocking BRPOPLPUSH, and redis-py 8's default socket
# timeout (5 s) would cut any wait longer than that (the warm-up waits for workers to boot).
backend = RedisBackend(
    namespace=f"{NAMESPACE}-results",
    use_namespace_prefix_keys=True,
    client=redis.Redis.from_url(REDIS_URL, socket_timeout=None),
)
broker = RedisBroker(url=REDIS_URL, namespace=NAMESPACE)  # type: ignore[no-untyped-call]
broker.add_middleware(Results(backend=backend))  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True, max_retries=0)
def echo(value: Any) -> Any:
    """Return the input, like NewFuse's echo handler."""
    return value
