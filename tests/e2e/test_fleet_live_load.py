"""The live feed under load: 500 WebSocket clients on one gateway, and a client that stops reading.

The fleet here is its Redis state only (what the operator and agents write), so the test decides
exactly when a change happens; the gateway runs with its default settings and real RBAC.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import json
import re
import secrets
import socket
import statistics
import time
from pathlib import Path

import httpx
import redis
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from gatewayproc import GatewayProcess
from localcluster import wait_for
from newfuse.fleetapi.feed import QUEUE_SIZE
from newfuse.fleetapi.liveroutes import CLOSE_SLOW
from newfuse.wire.keys import FleetKeys
from newfuse.wire.state import AgentState, AgentStatus, StateUpdate

CLIENTS = 500
BROADCASTS = 5


def _heartbeat(client: redis.Redis, keys: FleetKeys, agent: str, *, caps: int = 1) -> None:
    """What an agent writes at each heartbeat (its StateUpdate, a newer version)."""
    now = dt.datetime.now(dt.UTC)
    state = AgentState(
        id=agent,
        status=AgentStatus.ACTIVE,
        # Random names: the feed's WebSocket frames are compressed (permessage-deflate), and
        # repetitive state would shrink to nothing instead of filling a slow reader's buffers.
        capabilities=[secrets.token_hex(32) for _ in range(caps)],
    )
    update = StateUpdate(agent_id=agent, state=state, version=time.time_ns() // 1000, timestamp=now)
    client.hset(keys.agents, agent, update.to_json())


def _fleet(client: redis.Redis, namespace: str) -> FleetKeys:
    """A fleet as the operator mirrors it: enough for the gateway to serve it."""
    keys = FleetKeys(namespace, "load")
    _heartbeat(client, keys, "seed")
    client.hset(keys.fleet_state, keys.FLEET_STATE_FIELD, client.hget(keys.agents, "seed") or b"")
    return keys


def _url(gateway: GatewayProcess, namespace: str) -> str:
    return f"ws://127.0.0.1:{gateway.port}/live/{namespace}/load"


def test_500_clients_receive_a_broadcast_within_1s_at_p99(
    gateway: GatewayProcess, redis_client: redis.Redis, namespace: str, viewer: str
) -> None:
    keys = _fleet(redis_client, namespace)
    headers = {"Authorization": f"Bearer {viewer}"}

    async def run() -> list[float]:
        arrivals: list[dict[str, float]] = [{} for _ in range(CLIENTS)]
        gate = asyncio.Semaphore(50)

        async def one(index: int, ready: asyncio.Event, done: asyncio.Event) -> None:
            async with gate:
                ws = await connect(_url(gateway, namespace), additional_headers=headers)
            async with ws:
                assert json.loads(await ws.recv())["type"] == "snapshot"
                ready.set()
                while len(arrivals[index]) < BROADCASTS:
                    raw = await asyncio.wait_for(ws.recv(), 60)
                    # Timed on arrival: parsing 500 clients' frames in this one loop is the
                    # test's own work, not the gateway's.
                    arrived = time.time()
                    event = json.loads(raw)
                    agent = event.get("agent", {}).get("id", "")
                    if agent.startswith("broadcast-"):
                        arrivals[index].setdefault(agent, arrived)
                await done.wait()

        readies = [asyncio.Event() for _ in range(CLIENTS)]
        done = asyncio.Event()
        clients = [asyncio.create_task(one(i, readies[i], done)) for i in range(CLIENTS)]
        await asyncio.wait_for(asyncio.gather(*(r.wait() for r in readies)), 120)
        sent: dict[str, float] = {}
        for n in range(BROADCASTS):
            agent = f"broadcast-{n}"
            sent[agent] = time.time()
            _heartbeat(redis_client, keys, agent)
            await asyncio.sleep(1.5)
        done.set()
        await asyncio.wait_for(asyncio.gather(*clients), 60)
        return [a[agent] - sent[agent] for a in arrivals for agent in a]

    delays = sorted(asyncio.run(run()))
    assert len(delays) == CLIENTS * BROADCASTS
    p50, p99 = statistics.median(delays), delays[int(len(delays) * 0.99) - 1]
    print(f"{CLIENTS} clients x {BROADCASTS} broadcasts: p50 {p50:.3f}s p99 {p99:.3f}s")
    assert p99 < 1.0, (p50, p99)


def _rss_mib(pid: int) -> float:
    status = Path(f"/proc/{pid}/status").read_text()
    found = re.search(r"VmRSS:\s+(\d+) kB", status)
    assert found is not None
    return int(found.group(1)) / 1024


def _metric(gateway: GatewayProcess, name: str) -> float:
    text = httpx.get(gateway.url + "/metrics", timeout=10).text
    found = re.search(rf"^{name} (\S+)$", text, re.MULTILINE)
    return float(found.group(1)) if found else 0.0


async def _flood(client: redis.Redis, keys: FleetKeys, stop: asyncio.Event) -> None:
    """Heartbeats of 100 agents with big state, as fast as the feed can see them."""
    while not stop.is_set():
        for n in range(100):
            _heartbeat(client, keys, f"agent-{n:03d}", caps=100)
        await asyncio.sleep(0.5)


async def _keep_reading(ws: ClientConnection, stop: asyncio.Event) -> int:
    read = 0
    while not stop.is_set():
        try:
            await asyncio.wait_for(ws.recv(), 10)
        except TimeoutError:
            if stop.is_set():  # the flood ended: nothing more comes
                break
            raise
        read += 1
    return read


async def _stalled(gateway: GatewayProcess, url: str, headers: dict[str, str]) -> ClientConnection:
    """A client that stops reading: the library holds one unread frame and reads no more, and a
    small receive buffer leaves the rest to pile up on the gateway's side."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.connect(("127.0.0.1", gateway.port))
    return await connect(url, additional_headers=headers, max_queue=1, sock=sock)


async def _close_code(ws: ClientConnection) -> int | None:
    """Read what is buffered, then the close frame's code."""
    try:
        while True:
            await asyncio.wait_for(ws.recv(), 30)
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else None


def test_a_client_that_stops_reading_is_cut_off_and_memory_stays_flat(
    gateway: GatewayProcess, redis_client: redis.Redis, namespace: str, viewer: str
) -> None:
    keys = _fleet(redis_client, namespace)
    headers = {"Authorization": f"Bearer {viewer}"}
    url = _url(gateway, namespace)
    assert gateway.proc is not None
    pid = gateway.proc.pid

    async def run() -> tuple[float, float, int, int | None]:
        stop = asyncio.Event()
        gone, comes_back = (
            await _stalled(gateway, url, headers),
            await _stalled(gateway, url, headers),
        )
        fast = await connect(url, additional_headers=headers)
        flooding = asyncio.create_task(_flood(redis_client, keys, stop))
        reading = asyncio.create_task(_keep_reading(fast, stop))
        cut = await asyncio.to_thread(
            wait_for, lambda: _metric(gateway, "newfuse_gateway_watchers_cut_total") >= 2,
            120, what="both stalled clients to be cut off",
        )  # fmt: skip
        assert cut
        at_cut = _rss_mib(pid)
        # One client reads again at once: behind what was buffered it finds the close code.
        code = await _close_code(comes_back)
        await asyncio.sleep(20)  # the flood goes on: nothing more may pile up for the other
        after = _rss_mib(pid)
        stop.set()
        await flooding
        read = await reading
        await fast.close()
        with contextlib.suppress(ConnectionClosed):
            await gone.close()
        return at_cut, after, read, code

    at_cut, after, read, code = asyncio.run(run())
    print(f"gateway RSS at the cut {at_cut:.1f} MiB, 20 s of flood later {after:.1f} MiB")
    assert after - at_cut < 20, (at_cut, after)
    assert code == CLOSE_SLOW
    assert read > QUEUE_SIZE // 10, "the client that reads was served all along"
    assert _metric(gateway, "newfuse_gateway_watchers_cut_total") == 2
