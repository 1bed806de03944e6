"""Benchmark: the fleet API gateway against the direct Redis client, and its live feed's fan-out.

One redis-server, 4 agent processes (concurrency 4, echo handler) and one gateway process
(`python -m newfuse.fleetapi`, auth off: this measures the protocol path, not token checks):
- SendMessage -> completed task through the gateway with the official a2a-sdk client, beside the
  same echo task submitted and awaited with the direct Redis client (TaskClient), in the same run:
  one at a time for latency (p50, p99), then `--in-flight` at once for throughput;
- the live feed over SSE: `--subscribers` clients follow the fleet, one agent heartbeat changes,
  and the time until each subscriber has the change is measured, beside 10 subscribers.
Not a test: it prints figures; `make bench` runs it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import os
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import redis
from a2a.client import Client, ClientConfig, create_client
from a2a.types.a2a_pb2 import Message, Part, Role, SendMessageRequest
from rich.console import Console
from rich.table import Table

from agentprocs import spawn, start_agents, stop, stop_agents
from environment import STATE_ROOT, bench_redis, report_figures, size
from localcluster import wait_for
from localcluster.netutil import free_port
from newfuse.adapters.taskclient import TaskClient, TaskSpec
from newfuse.wire.endpoints import SKILL_KEY, a2a_url, live_path
from newfuse.wire.keys import FleetKeys
from newfuse.wire.state import AgentState, AgentStatus, StateUpdate

console = Console()
AGENTS, CONCURRENCY, NAMESPACE = 4, 4, "bench"
Send = Callable[[int], Awaitable[None]]


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def _state(agent: str, capabilities: list[str]) -> str:
    now = dt.datetime.now(dt.UTC)
    state = AgentState(id=agent, status=AgentStatus.ACTIVE, capabilities=capabilities)
    return StateUpdate(agent_id=agent, state=state, version=time.time_ns(), timestamp=now).to_json()


def mirror_fleet(url: str, fleet: str) -> None:
    """What the operator writes for a fleet: enough for the gateway to serve it."""
    keys = FleetKeys(NAMESPACE, fleet)
    with redis.Redis.from_url(url) as client:
        client.hset(keys.fleet_state, keys.FLEET_STATE_FIELD, _state(fleet, ["echo"]))


def start_gateway(redis_url: str, state: Path) -> tuple[object, str]:
    port = free_port()
    env = {
        **os.environ, "NEWFUSE_REDIS_URL": redis_url, "NEWFUSE_GATEWAY_HOST": "127.0.0.1",
        "NEWFUSE_GATEWAY_PORT": str(port), "NEWFUSE_GATEWAY_AUTH": "none",
    }  # fmt: skip
    log = state / f"gateway-{port}.log"  # one per run: a failed run keeps its own
    proc = spawn([sys.executable, "-m", "newfuse.fleetapi"], env, log)
    url = f"http://127.0.0.1:{port}"

    def ready() -> bool:
        try:
            return httpx.get(url + "/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    wait_for(ready, 60, what="the gateway")
    return proc, url


async def timed(send: Send, count: int, in_flight: int) -> tuple[list[float], float]:
    """Latencies of ``count`` sends, ``in_flight`` at a time, and the seconds they all took."""
    latencies: list[float] = []
    gate = asyncio.Semaphore(in_flight)

    async def one(i: int) -> None:
        async with gate:
            started = time.perf_counter()
            await send(i)
            latencies.append(time.perf_counter() - started)

    started = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(count)))
    return latencies, time.perf_counter() - started


def _message(i: int, run: str) -> SendMessageRequest:
    message = Message(message_id=f"{run}-{i}", role=Role.ROLE_USER, parts=[Part(text=str(i))])
    message.metadata.update({SKILL_KEY: "echo"})
    return SendMessageRequest(message=message)


async def request_paths(
    redis_url: str, gateway: str, fleet: str, count: int, in_flight: int
) -> dict[str, tuple[list[float], float, list[float], float]]:
    """Per path: (sequential latencies, their seconds, concurrent latencies, their seconds)."""
    tasks = TaskClient.from_url(redis_url, NAMESPACE, fleet)
    http = httpx.AsyncClient(timeout=120, limits=httpx.Limits(max_connections=in_flight + 4))
    client: Client = await create_client(
        a2a_url(gateway, NAMESPACE, fleet).rstrip("/"),
        client_config=ClientConfig(httpx_client=http, streaming=False),
    )
    run = uuid.uuid4().hex[:6]

    async def direct(i: int) -> None:
        submitted = await tasks.submit(TaskSpec("echo", i, task_id=f"d{run}-{i}-{time.time_ns()}"))
        await tasks.wait(submitted.task_id, 120)

    async def through_gateway(i: int) -> None:
        tag = f"{run}-{time.time_ns()}"
        async for reply in client.send_message(_message(i, tag)):
            assert reply.task.status.state == 3, reply  # TASK_STATE_COMPLETED

    out = {}
    try:
        await direct(-1)  # warm both paths
        await through_gateway(-1)
        for name, send in (("direct Redis client", direct), ("gateway (a2a-sdk)", through_gateway)):
            sequential, seq_s = await timed(send, count, 1)
            concurrent, conc_s = await timed(send, count * 4, in_flight)
            out[name] = (sequential, seq_s, concurrent, conc_s)
    finally:
        await client.close()
        await tasks.aclose()
    return out


async def fan_out(redis_url: str, gateway: str, fleet: str, subscribers: int) -> list[float]:
    """Seconds from one agent's heartbeat to each of ``subscribers`` SSE clients having it."""
    keys = FleetKeys(NAMESPACE, fleet)
    url = gateway + live_path(NAMESPACE, fleet) + "/events"
    agent = f"fanout-{uuid.uuid4().hex[:6]}"
    arrived: list[float] = []
    ready = 0
    all_ready = asyncio.Event()
    limits = httpx.Limits(max_connections=subscribers + 10)
    async with httpx.AsyncClient(timeout=httpx.Timeout(600.0), limits=limits) as http:

        async def follow() -> None:
            nonlocal ready
            async with http.stream("GET", url) as reply:
                lines = reply.aiter_lines()
                async for line in lines:
                    if line.startswith("data:"):  # the snapshot
                        break
                ready += 1
                if ready == subscribers:
                    all_ready.set()
                async for line in lines:
                    if line.startswith("data:") and agent in line:
                        arrived.append(time.perf_counter())
                        return

        followers = [asyncio.create_task(follow()) for _ in range(subscribers)]
        await asyncio.wait_for(all_ready.wait(), 300)
        # The feed looks every 0.5 s: a change lands at a random point of that period.
        await asyncio.sleep(random.uniform(1.0, 1.5))  # noqa: S311 - not for security
        with redis.Redis.from_url(redis_url) as client:
            sent = time.perf_counter()
            client.hset(keys.agents, agent, _state(agent, ["echo"]))
        await asyncio.wait_for(asyncio.gather(*followers), 120)
        with redis.Redis.from_url(redis_url) as client:
            client.hdel(keys.agents, agent)
    return [t - sent for t in arrived]


def _row(table: Table, name: str, figures: tuple[list[float], float, list[float], float]) -> None:
    sequential, _, concurrent, conc_s = figures
    table.add_row(
        name,
        f"{percentile(sequential, 0.5) * 1000:.1f}",
        f"{percentile(sequential, 0.99) * 1000:.1f}",
        f"{len(concurrent) / conc_s:,.0f}",
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", type=int, default=size(300, 20))
    parser.add_argument("--in-flight", type=int, default=size(32, 4))
    parser.add_argument("--subscribers", type=int, default=size(1000, 20))
    args = parser.parse_args(argv)
    state = STATE_ROOT / "fleet_api"
    state.mkdir(parents=True, exist_ok=True)
    fleet = f"api{uuid.uuid4().hex[:6]}"
    with bench_redis("fleet_api") as server:
        mirror_fleet(server.url, fleet)
        agents = start_agents(server.url, NAMESPACE, fleet, AGENTS, CONCURRENCY, state)
        gateway, url = start_gateway(server.url, state)
        try:
            console.print(f"[dim]{args.tasks} tasks one at a time, {args.tasks * 4} with "
                          f"{args.in_flight} in flight, per path")  # fmt: skip
            paths = asyncio.run(request_paths(server.url, url, fleet, args.tasks, args.in_flight))
            console.print(f"[dim]SSE fan-out to 10, then {args.subscribers} subscribers")
            small = asyncio.run(fan_out(server.url, url, fleet, 10))
            large = asyncio.run(fan_out(server.url, url, fleet, args.subscribers))
        finally:
            stop([gateway])  # type: ignore[list-item]
            stop_agents(agents)
            server.clear(FleetKeys(NAMESPACE, fleet).pattern)

    table = Table(
        title=f"echo task, send -> completed (same Redis, agents and run; {AGENTS} agents)"
    )
    for column in (
        "path",
        "p50 ms (one at a time)",
        "p99 ms",
        f"tasks/s ({args.in_flight} in flight)",
    ):
        table.add_column(column, justify="right" if "ms" in column or "/s" in column else "left")
    for name, figures in paths.items():
        _row(table, name, figures)
    console.print(table)
    direct, gateway_path = paths["direct Redis client"], paths["gateway (a2a-sdk)"]
    ratio = (len(gateway_path[2]) / gateway_path[3]) / (len(direct[2]) / direct[3])
    console.print(f"gateway throughput is {ratio:.2f}x the direct client's")
    fan = Table(title="live feed (SSE): one heartbeat -> every subscriber has it")
    for column in ("subscribers", "p50 ms", "p99 ms", "last ms"):
        fan.add_column(column, justify="right")
    for n, delays in ((10, small), (args.subscribers, large)):
        shown = (percentile(delays, 0.5), percentile(delays, 0.99), max(delays))
        fan.add_row(str(n), *(f"{v * 1000:.0f}" for v in shown))
    console.print(fan)
    report_figures("fleet_api", {
        "direct_p50_ms": percentile(direct[0], 0.5) * 1000,
        "direct_p99_ms": percentile(direct[0], 0.99) * 1000,
        "gateway_p50_ms": percentile(gateway_path[0], 0.5) * 1000,
        "gateway_p99_ms": percentile(gateway_path[0], 0.99) * 1000,
        "direct_per_s": len(direct[2]) / direct[3],
        "gateway_per_s": len(gateway_path[2]) / gateway_path[3],
        "gateway_ratio_to_direct": ratio,
        "fanout_subscribers": args.subscribers,
        "fanout_p99_ms": percentile(large, 0.99) * 1000,
        "fanout_last_ms": max(large) * 1000,
        "fanout10_p99_ms": percentile(small, 0.99) * 1000,
    })  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
