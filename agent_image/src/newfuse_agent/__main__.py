"""`python -m newfuse_agent`: the agent process of every agent pod.

Serves /healthz (the process and its loop are alive), /readyz (taking tasks, Redis reachable) and
/metrics (Prometheus), and drains on SIGTERM within the pod's grace period.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sys
from typing import TYPE_CHECKING

import uvloop
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pythonjsonlogger.json import JsonFormatter

from newfuse.adapters.redis_connect import connect
from newfuse.logcontext import ContextFilter
from newfuse.tracing import configure_tracing
from newfuse.wire.keys import FleetKeys
from newfuse_agent.config import AgentConfig
from newfuse_agent.gateway import GatewayClient, GatewayConfig
from newfuse_agent.handlers import TaskContext, load_builtin_handlers
from newfuse_agent.runtime import Agent

if TYPE_CHECKING:
    from redis.asyncio import Redis

    from newfuse_agent.memory import AgentMemory


def _http_app(agent: Agent) -> web.Application:
    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"status": "ok", "agent": agent.config.agent_id})

    async def readyz(_: web.Request) -> web.Response:
        ready = agent.ready
        return web.json_response(
            {"ready": ready, "status": agent.status}, status=200 if ready else 503
        )

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(body=generate_latest(), headers={"Content-Type": CONTENT_TYPE_LATEST})

    app = web.Application()
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    return app


async def _memory(client: Redis, keys: FleetKeys, config: AgentConfig) -> AgentMemory | None:
    """The fleet's memory, if this image has the `memory` extra (its model and index libraries).

    In the fleet's Redis, or in PostgreSQL when spec.memory.postgres gives a DSN: that needs the
    `memory-pg` extra too (psycopg, imported only then). A database that cannot be reached stops
    the agent (the pod restarts and tries again) rather than run without the memory it was given.
    """
    try:
        from newfuse_agent.memory import AgentMemory
    except ImportError as exc:
        logging.getLogger(__name__).info("no fleet memory in this image: %s", exc)
        return None
    if not config.memory_postgres_url:
        return AgentMemory(client, keys, config)
    try:
        from psycopg import OperationalError

        from newfuse.adapters.embedder import MODELS
        from newfuse.adapters.pgmemory import PgVectorMemory
    except ImportError as exc:
        logging.getLogger(__name__).error(
            "spec.memory.postgres is set but this image lacks the memory-pg extra (%s): "
            "no fleet memory",
            exc,
        )
        return None
    backend = await PgVectorMemory.connect(
        config.memory_postgres_url,
        config.namespace,
        config.fleet,
        MODELS[config.memory_model].dim,
        config.memory_max_items,
    )
    return AgentMemory(
        client, keys, config, backend, unreachable=(OperationalError,), close=backend.conn.close
    )


async def serve(config: AgentConfig) -> None:
    """Run one agent until it has drained."""
    # Every in-flight task may hold a connection, plus fetch, reclaim, heartbeat and pub/sub.
    client = connect(
        config.redis_url,
        timeout=5,
        max_connections=config.concurrency + 8,
        ca_file=config.redis_ca_file,
        encoding_errors="replace",  # hostile bytes on a stream are refused, not a crash
    )
    gateway_config = GatewayConfig.from_env(os.environ)
    keys = FleetKeys(config.namespace, config.fleet)
    gateway = GatewayClient(gateway_config, redis=client, keys=keys) if gateway_config else None
    memory = await _memory(client, keys, config)
    context = TaskContext(
        agent_id=config.agent_id,
        fleet=config.fleet,
        namespace=config.namespace,
        revision=config.revision,
        capabilities=config.capabilities,
        gateway=gateway,
        memory=memory,
    )
    agent = Agent(config, client, load_builtin_handlers(), context)
    upkeep = asyncio.create_task(memory.upkeep(), name="memory") if memory else None
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, agent.request_drain)
    runner = web.AppRunner(_http_app(agent), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, config.http_address, config.http_port).start()
    try:
        await agent.run()
    finally:
        if upkeep is not None:
            upkeep.cancel()
        if memory is not None:
            await memory.aclose()
        await runner.cleanup()
        if gateway is not None:
            await gateway.aclose()
        await client.aclose()


def main() -> int:
    """Read the configuration and run the agent."""
    try:
        config = AgentConfig.from_env()
    except ValueError as exc:
        print(f"newfuse-agent: {exc}", file=sys.stderr)
        return 2
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(
        JsonFormatter(
            "{asctime}{levelname}{name}{message}",
            style="{",
            rename_fields={"asctime": "time", "levelname": "level", "name": "logger"},
            static_fields={
                "agent": config.agent_id,
                "fleet": config.fleet,
                "namespace": config.namespace,
                "revision": config.revision,
            },
        )
    )
    handler.addFilter(ContextFilter())
    logging.basicConfig(level=config.log_level.upper(), handlers=[handler], force=True)
    configure_tracing(config.trace_exporter, "newfuse-agent")
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        runner.run(serve(config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
