"""The Dramatiq side of the task benchmark: the same echo task, with Redis broker and results.

Imported by `dramatiq` worker processes (`dramatiq dramatiq_echo`) and by the benchmark, which
enqueues and waits for results. The broker URL comes from BENCH_REDIS_URL.
"""

from __future__ import annotations

import os
from typing import Any

import dramatiq
from dramatiq.brokers.redis import RedisBroker
from dramatiq.results import Results
from dramatiq.results.backends import RedisBackend

REDIS_URL = os.environ.get("BENCH_REDIS_URL", "redis://127.0.0.1:6379/0")
backend = RedisBackend(url=REDIS_URL)
broker = RedisBroker(url=REDIS_URL)  # type: ignore[no-untyped-call]
broker.add_middleware(Results(backend=backend))  # type: ignore[no-untyped-call]
dramatiq.set_broker(broker)


@dramatiq.actor(store_results=True, max_retries=0)
def echo(value: Any) -> Any:
    """Return the input, like NewFuse's echo handler."""
    return value
