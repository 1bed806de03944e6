"""The agent runtime against the real Redis: delivery, priorities, failures, reclaim, drain, replay.

Agents run in this process (same code as `python -m newfuse_agent`, without the HTTP server) so the
tests can give them test handlers and stop them precisely; the e2e suite runs them as processes.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any, cast

import orjson
import pytest
import redis.asyncio as aioredis
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from typer.testing import CliRunner

from harness import RedisHandle
from localcluster.netutil import free_port
from newfuse.adapters.redis_store import RedisStore
from newfuse.adapters.taskclient import StreamEntries, TaskClient, TaskSpec
from newfuse.cli import app as cli_app
from newfuse.logcontext import ContextFilter
from newfuse.wire.envelope import MessageType, encode
from newfuse.wire.signing import Channel, Signer
from newfuse.wire.state import AgentState, AgentStatus, StateUpdate
from newfuse.wire.taskpolicy import TaskPolicy
from newfuse.wire.tasks import CONSUMER_GROUP, Priority, ResultStatus
from newfuse_agent.config import AgentConfig
from newfuse_agent.gateway import GatewayClient, GatewayConfig
from newfuse_agent.handlers import Handler, HandlerError, TaskContext
from newfuse_agent.handlers.chat import chat
from newfuse_agent.handlers.echo import echo
from newfuse_agent.queue import utc_now
from newfuse_agent.runtime import Agent

KEY = "test-signing-key-of-at-least-32-bytes"


def run(coro: Awaitable[None]) -> None:
    asyncio.run(asyncio.wait_for(coro, 60))


async def eventually(predicate: Callable[[], Awaitable[bool]], timeout: float, what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await predicate():
        if loop.time() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        await asyncio.sleep(0.02)


class Fleet:
    """A throwaway fleet in Redis: a client and a way to start agents on it."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.namespace, self.name = "rt", f"f{uuid.uuid4().hex[:8]}"
        self.client = TaskClient.from_url(url, self.namespace, self.name, signing_key=None)
        self.redis: aioredis.Redis = self.client.client

    def config(self, agent_id: str, **overrides: Any) -> AgentConfig:
        values: dict[str, Any] = {
            "agent_id": agent_id,
            "namespace": self.namespace,
            "fleet": self.name,
            "revision": "r1",
            "redis_url": self.url,
            "concurrency": 4,
            "heartbeat_seconds": 0.2,
            # Short bounds so reclaims and retries happen within a test's seconds; the e2e suite
            # runs the defaults.
            "tasks": TaskPolicy(
                claim_idle_seconds=0.5, lease_renew_seconds=0.2, retry_base_seconds=0.05
            ),
            "drain_grace_seconds": 5,
            **overrides,
        }
        return AgentConfig(**values)

    @asynccontextmanager
    async def agent(
        self,
        agent_id: str,
        handlers: dict[str, Handler] | None = None,
        gateway: GatewayClient | None = None,
        **overrides: Any,
    ) -> AsyncIterator[Agent]:
        config = self.config(agent_id, **overrides)
        client = aioredis.Redis.from_url(self.url, decode_responses=True)
        context = TaskContext(agent_id, self.name, self.namespace, "r1", (), gateway=gateway)
        agent = Agent(config, client, handlers or {"echo": echo}, context)
        task = asyncio.create_task(agent.run())
        await eventually(lambda: _true(agent.ready), 10, "agent ready")
        try:
            yield agent
        finally:
            agent.request_drain()
            await asyncio.wait_for(task, 30)
            await client.aclose()

    async def results(self) -> list[dict[str, Any]]:
        entries = await self.redis.xrange(self.client.keys.result_stream)
        return [orjson.loads(fields["envelope"])["payload"] for _, fields in entries]

    async def dead_letters(self) -> list[dict[str, str]]:
        entries = cast(StreamEntries, await self.redis.xrange(self.client.keys.dead_letters))
        return [fields for _, fields in entries]

    async def close(self) -> None:
        keys = [k async for k in self.redis.scan_iter(match=self.client.keys.pattern)]
        if keys:
            await self.redis.delete(*keys)
        await self.client.aclose()


async def _true(value: bool) -> bool:
    return value


@pytest.fixture
def fleet_url(redis_server: RedisHandle) -> str:
    return redis_server.url


def with_fleet(url: str, body: Callable[[Fleet], Awaitable[None]]) -> None:
    async def scenario() -> None:
        fleet = Fleet(url)
        try:
            await body(fleet)
        finally:
            await fleet.close()

    run(scenario())


def test_two_agents_complete_every_task_exactly_once(fleet_url: str) -> None:
    async def body(fleet: Fleet) -> None:
        async with fleet.agent("a-0"), fleet.agent("a-1"):
            ids = [
                s.task_id
                async for batch in fleet.client.submit_many(TaskSpec("echo", i) for i in range(300))
                for s in batch
            ]
            await eventually(lambda: _count(fleet, 300), 30, "300 results")
        results = await fleet.results()
        assert sorted(r["task_id"] for r in results) == sorted(ids)
        assert {r["agent_id"] for r in results} == {"a-0", "a-1"}, "both agents took a share"
        assert all(r["status"] == "succeeded" for r in results)
        by_id = {r["task_id"]: r for r in results}
        assert by_id[ids[7]]["output"] == 7
        states = {u.agent_id: u for u in await fleet.client.agents()}
        assert sum(u.state.metrics.tasks_completed for u in states.values()) == 300
        assert all(u.state.status is AgentStatus.INACTIVE for u in states.values()), (
            "drained agents are inactive"
        )

    with_fleet(fleet_url, body)


async def _count(fleet: Fleet, n: int) -> bool:
    return await fleet.client.result_count() >= n


def test_high_priority_backlog_is_served_before_normal(fleet_url: str) -> None:
    async def body(fleet: Fleet) -> None:
        await fleet.client.submit(TaskSpec("echo", "warm-up"))  # creates the streams
        async for _ in fleet.client.submit_many(
            TaskSpec("echo", f"n{i}", Priority.NORMAL) for i in range(40)
        ):
            pass
        async for _ in fleet.client.submit_many(
            TaskSpec("echo", f"l{i}", Priority.LOW) for i in range(10)
        ):
            pass
        async for _ in fleet.client.submit_many(
            TaskSpec("echo", f"h{i}", Priority.HIGH) for i in range(10)
        ):
            pass
        async with fleet.agent("solo", concurrency=1):
            await eventually(lambda: _count(fleet, 61), 30, "61 results")
        order = [r["output"] for r in await fleet.results()]
        assert all(o.startswith("h") for o in order[:10]), order[:12]
        assert all(o.startswith("l") for o in order[-10:]), order[-12:]

    with_fleet(fleet_url, body)


def test_malformed_messages_are_dead_lettered_counted_and_survived(fleet_url: str) -> None:
    async def body(fleet: Fleet) -> None:
        stream = fleet.client.keys.tasks(Priority.NORMAL)
        await fleet.client.submit(TaskSpec("echo", "before"))
        now = utc_now()
        to = fleet.client.keys.audience(Channel.TASKS)
        signer = Signer(KEY.encode())
        bad = {
            "malformed_json": b"{nope",
            "invalid_envelope": orjson.dumps({"type": "task", "payload": {}}),
            "invalid_payload": encode(
                MessageType.TASK, {"handler": "echo"}, "x", now=now, audience=to, signer=signer
            ),
            "unsupported_version": encode(
                MessageType.TASK,
                {"task_id": "v2", "handler": "echo"},
                "x",
                now=now,
                audience=to,
                signer=signer,
                protocol_version="2.0",
            ),
            "bad_signature": encode(
                MessageType.TASK,
                {"task_id": "forged", "handler": "echo"},
                "x",
                now=now,
                audience=to,
                signer=Signer(b"wrong", kid=signer.kid),
            ),
            "unsigned": encode(
                MessageType.TASK, {"task_id": "plain", "handler": "echo"}, "x", now=now
            ),
        }
        for raw in bad.values():
            await fleet.redis.xadd(stream, {"envelope": raw})
        signed = TaskClient(fleet.redis, fleet.namespace, fleet.name, signing_key=KEY.encode())
        after = await signed.submit(TaskSpec("echo", "after"))
        async with fleet.agent("strict", signing_key=KEY, require_signatures=True) as agent:
            await eventually(lambda: _dead(fleet, len(bad) + 1), 20, "dead letters")
            assert (await fleet.client.wait(after.task_id, 10)).output == "after"
            assert agent.ready, "still working after all that"
        reasons = sorted(d["reason"] for d in await fleet.dead_letters())
        # "before" was submitted unsigned, so the strict agent refuses it too.
        assert reasons == sorted([*bad, "unsigned"])
        from newfuse_agent import metrics

        for reason in bad:
            assert metrics.REJECTED.labels(reason)._value.get() >= 1, reason

    with_fleet(fleet_url, body)


async def _deferred(fleet: Fleet, n: int) -> bool:
    return int(await fleet.redis.zcard(fleet.client.keys.retries)) >= n


async def _dead(fleet: Fleet, n: int) -> bool:
    return int(await fleet.redis.xlen(fleet.client.keys.dead_letters)) >= n


def test_retries_then_dead_letter_with_a_failed_result(fleet_url: str) -> None:
    calls: dict[str, int] = {}

    async def flaky(task_input: Any, context: TaskContext) -> Any:
        calls[task_input] = calls.get(task_input, 0) + 1
        if task_input == "always" or calls[task_input] < 3:
            raise HandlerError(f"attempt {calls[task_input]} failed", retryable=True)
        return "ok"

    async def fatal(task_input: Any, context: TaskContext) -> Any:
        raise HandlerError("bad input", retryable=False)

    async def body(fleet: Fleet) -> None:
        ok = await fleet.client.submit(TaskSpec("flaky", "third-time", max_attempts=3))
        never = await fleet.client.submit(TaskSpec("flaky", "always", max_attempts=3))
        no = await fleet.client.submit(TaskSpec("fatal", "x", max_attempts=5))
        unknown = await fleet.client.submit(TaskSpec("nope", "x"))
        async with fleet.agent("worker", {"flaky": flaky, "fatal": fatal}):
            results = {
                s.task_id: await fleet.client.wait(s.task_id, 20) for s in (ok, never, no, unknown)
            }
        assert (results[ok.task_id].status, results[ok.task_id].attempts) == (
            ResultStatus.SUCCEEDED,
            3,
        )
        assert (results[never.task_id].status, results[never.task_id].attempts) == (
            ResultStatus.FAILED,
            3,
        )
        assert results[no.task_id].attempts == 1, "non-retryable errors fail at once"
        assert "unknown_handler" in (results[unknown.task_id].error or "")
        letters = {d["task_id"]: d for d in await fleet.dead_letters()}
        assert set(letters) == {never.task_id, no.task_id, unknown.task_id}
        assert "attempt 3 failed" in letters[never.task_id]["detail"]

    with_fleet(fleet_url, body)


def test_a_dead_consumers_tasks_are_reclaimed_and_completed_once(fleet_url: str) -> None:
    async def body(fleet: Fleet) -> None:
        specs = [await fleet.client.submit(TaskSpec("echo", i)) for i in range(5)]
        stream = fleet.client.keys.tasks(Priority.NORMAL)
        await fleet.redis.xgroup_create(stream, CONSUMER_GROUP, id="0", mkstream=True)
        # A consumer takes the tasks and dies without acknowledging them.
        taken = await fleet.redis.xreadgroup(CONSUMER_GROUP, "dead-agent:1", {stream: ">"}, count=5)
        assert len(taken[0][1]) == 5
        fast = TaskPolicy(claim_idle_seconds=0.3, lease_renew_seconds=0.1)
        async with fleet.agent("rescuer", tasks=fast):
            await eventually(lambda: _count(fleet, 5), 20, "reclaimed tasks completed")
        results = await fleet.results()
        assert sorted(r["task_id"] for r in results) == sorted(s.task_id for s in specs)
        assert {r["agent_id"] for r in results} == {"rescuer"}
        pending = await fleet.redis.xpending(stream, CONSUMER_GROUP)
        assert pending["pending"] == 0

    with_fleet(fleet_url, body)


def test_drain_finishes_in_flight_work_or_hands_it_back(fleet_url: str) -> None:
    release = asyncio.Event()

    async def slow(task_input: Any, context: TaskContext) -> Any:
        if task_input == "forever":
            await asyncio.Event().wait()
        await release.wait()
        return task_input

    async def body(fleet: Fleet) -> None:
        quick = await fleet.client.submit(TaskSpec("slow", "quick"))
        stuck = await fleet.client.submit(TaskSpec("slow", "forever"))
        async with fleet.agent("leaver", {"slow": slow}, drain_grace_seconds=1.0) as agent:
            await eventually(lambda: _true(len(agent._inflight) == 2), 10, "two tasks in flight")
            agent.request_drain()
            release.set()
        # "quick" finished during the grace period; "forever" was handed back, not lost.
        assert (await fleet.client.wait(quick.task_id, 5)).agent_id == "leaver"
        assert await fleet.client.result(stuck.task_id) is None
        release.set()
        async with fleet.agent("successor", {"slow": echo}):
            assert (await fleet.client.wait(stuck.task_id, 10)).agent_id == "successor"
        [state] = [u for u in await fleet.client.agents() if u.agent_id == "leaver"]
        assert state.state.status is AgentStatus.INACTIVE

    with_fleet(fleet_url, body)


def test_task_ids_are_idempotent_and_signed_replays_refused(fleet_url: str) -> None:
    async def body(fleet: Fleet) -> None:
        signed = TaskClient(fleet.redis, fleet.namespace, fleet.name, signing_key=KEY.encode())
        first = await signed.submit(TaskSpec("echo", 1, task_id="same-id"))
        again = await signed.submit(TaskSpec("echo", 2, task_id="same-id"))
        assert (first.created, again.created, again.entry_id) == (True, False, first.entry_id)
        # Someone captures the signed message (a finished entry is deleted from the stream)...
        stream = fleet.client.keys.tasks(Priority.NORMAL)
        [(_, fields)] = cast(StreamEntries, await fleet.redis.xrange(stream, count=1))
        async with fleet.agent("a", signing_key=KEY, require_signatures=True):
            assert (await fleet.client.wait("same-id", 10)).output == 1
            # ... and re-adds it under a new stream entry.
            await fleet.redis.xadd(
                stream, {"task_id": fields["task_id"], "envelope": fields["envelope"]}
            )
            await eventually(lambda: _dead(fleet, 1), 10, "the replay dead-lettered")
        assert [d["reason"] for d in await fleet.dead_letters()] == ["replayed"]
        assert len(await fleet.results()) == 1
        assert int(await fleet.redis.xlen(stream)) == 0, "both entries left the stream"

    with_fleet(fleet_url, body)


def test_coordination_channel_ping_and_targeted_drain(fleet_url: str) -> None:
    async def body(fleet: Fleet) -> None:
        async with fleet.agent("stays") as stays, fleet.agent("goes") as goes:
            pubsub = fleet.redis.pubsub()
            await pubsub.subscribe(fleet.client.keys.coordination_channel)
            heard = await fleet.client.publish(MessageType.PING, {"target": "*"})
            assert heard >= 3, "both agents and this test are subscribed"
            pongs: set[str] = set()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + 10
            while pongs != {"stays", "goes"} and loop.time() < deadline:
                message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
                if message is None:
                    continue
                envelope = orjson.loads(message["data"])
                if envelope["type"] == "pong":
                    pongs.add(envelope["payload"]["agent_id"])
            assert pongs == {"stays", "goes"}
            await pubsub.aclose()  # type: ignore[no-untyped-call]
            await fleet.client.publish(MessageType.DRAIN, {"target": "goes"})
            await eventually(lambda: _true(not goes.ready), 10, "the targeted agent draining")
            assert stays.ready, "a drain for one agent leaves the others alone"
            done = await fleet.client.submit(TaskSpec("echo", "still served"))
            assert (await fleet.client.wait(done.task_id, 10)).agent_id == "stays"

    with_fleet(fleet_url, body)


def test_a_failing_gateway_opens_the_circuit_then_recovery_closes_it(fleet_url: str) -> None:
    """Chat tasks through a real agent against a local stub model gateway that fails, then heals."""
    from aiohttp import web

    from newfuse_agent.gateway import CircuitState

    stub = {"failing": True, "hits": 0}
    now = [0.0]

    async def completions(request: web.Request) -> web.Response:
        stub["hits"] += 1
        if stub["failing"]:
            return web.json_response({"error": "overloaded"}, status=503)
        return web.json_response(
            {"model": "m", "choices": [{"message": {"role": "assistant", "content": "ok"}}]}
        )

    async def body(fleet: Fleet) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", completions)
        runner = web.AppRunner(app)
        await runner.setup()
        port = free_port()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        gateway = GatewayClient(
            GatewayConfig(
                endpoint=f"http://127.0.0.1:{port}/v1",
                max_retries=1,
                backoff_base_seconds=0.01,
                backoff_max_seconds=0.02,
                breaker_failure_threshold=3,
                breaker_recovery_seconds=30.0,
            ),
            # The breaker's clock only moves when the test says so: a slow machine must not
            # half-open the circuit in the middle of the failing tasks.
            clock=lambda: now[0],
        )

        def circuit() -> CircuitState:
            return gateway.breaker.state

        try:
            async with fleet.agent("caller", {"chat": chat}, gateway=gateway, concurrency=1):
                failing = [
                    await fleet.client.submit(TaskSpec("chat", f"q{i}", max_attempts=1))
                    for i in range(10)
                ]
                keys = fleet.client.keys
                await eventually(lambda: _deferred(fleet, 7), 20, "7 tasks put aside")
                tried = [await fleet.client.wait(s.task_id, 20) for s in failing[:3]]
                assert {r.status for r in tried} == {ResultStatus.FAILED}
                assert circuit() is CircuitState.OPEN
                # 3 failing calls (each tried twice) opened the circuit; the other 7 never
                # reached the gateway: they wait for the circuit to half-open instead of failing.
                assert stub["hits"] == 6
                assert len(await fleet.dead_letters()) == 3
                for spec in failing[3:]:
                    assert await fleet.client.result(spec.task_id) is None
                due = cast(
                    list[tuple[str, float]],
                    await fleet.redis.zrange(keys.retries, 0, -1, withscores=True),
                )
                server_now = (await fleet.redis.time())[0]
                wait_s = [score / 1000 - server_now for _, score in due]
                assert all(25 < w <= 35 for w in wait_s), f"due at the half-open time: {wait_s}"
                stub["failing"] = False
                now[0] += 31.0  # past the recovery time: the next call is the half-open trial
                # Let the put-aside tasks come due now rather than in 30 s of real time.
                await fleet.redis.zadd(keys.retries, {m: 0 for m, _ in due})
                later = [await fleet.client.wait(s.task_id, 20) for s in failing[3:]]
                assert {r.status for r in later} == {ResultStatus.SUCCEEDED}
                assert all(r.attempts == 1 for r in later), "a deferral is not an attempt"
                assert all("circuit" in r.history[0].error for r in later)
                assert circuit() is CircuitState.CLOSED
        finally:
            await gateway.aclose()
            await runner.cleanup()

    with_fleet(fleet_url, body)


def test_drain_finishes_when_redis_turns_a_cancellation_into_an_error(fleet_url: str) -> None:
    """redis-py raises ConnectionError for a read cancelled mid-way; that must not stall a drain."""
    from redis.exceptions import ConnectionError as RedisConnectionError

    async def body(fleet: Fleet) -> None:
        entered = asyncio.Event()

        async def fetch_like_redis_py(count: int, block_ms: int) -> list[Any]:
            entered.set()
            try:
                await asyncio.Event().wait()
            except asyncio.CancelledError:
                raise RedisConnectionError("Connection closed by server.") from None
            return []

        loop = asyncio.get_running_loop()
        async with fleet.agent("stubborn") as agent:
            agent.queue.fetch = fetch_like_redis_py  # type: ignore[method-assign]
            await asyncio.wait_for(entered.wait(), 10)
            started = loop.time()
        assert loop.time() - started < 8, (
            "the drain finished (it used to loop on the error forever)"
        )

    with_fleet(fleet_url, body)


def test_cli_submit_agent_handling_and_result_write_share_one_trace(
    fleet_url: str, span_exporter: InMemorySpanExporter
) -> None:
    """`newfuse task submit --wait` -> agent -> result: one trace, linked via traceparent."""
    task_id = f"traced-{uuid.uuid4().hex[:8]}"

    async def body(fleet: Fleet) -> None:
        # The CLI refuses fleets the operator has not mirrored; mirror this one as it would.
        now = utc_now()
        state = AgentState(id=fleet.name, status=AgentStatus.ACTIVE)
        store = RedisStore(fleet.url)
        await store.put_fleet_state(
            fleet.client.keys,
            StateUpdate(agent_id=fleet.name, state=state, version=1, timestamp=now),
        )
        await store.close()
        async with fleet.agent("a-0"):
            # The real CLI command, in a thread because it runs its own event loop.
            outcome = await asyncio.to_thread(
                CliRunner().invoke,
                cli_app,
                ["task", "submit", fleet.name, "-n", fleet.namespace, "--id", task_id,
                 "--payload", '{"q": 1}', "--wait", "--timeout", "20",
                 "--redis-url", fleet.url],
            )  # fmt: skip
            assert outcome.exit_code == 0, outcome.output
        stored = cast(StreamEntries, await fleet.redis.xrange(fleet.client.keys.result_stream))
        assert len(stored) == 1
        seen["traceparent"] = orjson.loads(stored[0][1]["envelope"])["metadata"]["traceparent"]

    seen: dict[str, str] = {}
    with_fleet(fleet_url, body)
    spans = {s.name: s for s in span_exporter.get_finished_spans()}
    cli, submit = spans["newfuse.cli.submit"], spans["newfuse.task.submit"]
    process, result = spans["newfuse.task.process"], spans["newfuse.task.result"]
    trace_ids = {s.context.trace_id for s in (cli, submit, process, result)}
    assert len(trace_ids) == 1, "every hop is in the CLI command's trace"
    # Parent links: CLI command > submit (producer) > agent's processing (consumer) > result write.
    assert submit.parent.span_id == cli.context.span_id
    assert process.parent.span_id == submit.context.span_id
    assert process.parent.is_remote, "the agent continued the trace from the message"
    assert result.parent.span_id == process.context.span_id
    assert submit.attributes["newfuse.task_id"] == task_id
    assert process.attributes["newfuse.task_id"] == task_id
    assert process.attributes["newfuse.agent_id"] == "a-0"
    assert result.attributes["newfuse.result_status"] == "succeeded"
    # The stored result carries the result span's context, for whoever reads it next.
    _, trace_id, span_id, _ = seen["traceparent"].split("-")
    assert (trace_id, span_id) == (
        f"{result.context.trace_id:032x}",
        f"{result.context.span_id:016x}",
    )


def test_log_lines_written_while_handling_a_task_carry_its_id(
    fleet_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    async def chatty(task_input: Any, context: TaskContext) -> Any:
        logging.getLogger("newfuse_agent.handlers.test").info("working on %s", task_input)
        return task_input

    caplog.handler.addFilter(ContextFilter())  # what `python -m newfuse_agent` installs
    caplog.set_level(logging.INFO)

    async def body(fleet: Fleet) -> None:
        async with fleet.agent("a-0", handlers={"chatty": chatty}):
            submitted = await fleet.client.submit(TaskSpec("chatty", "x", task_id="logged-1"))
            await fleet.client.wait(submitted.task_id, 10)

    with_fleet(fleet_url, body)
    [line] = [r for r in caplog.records if r.getMessage() == "working on x"]
    assert getattr(line, "task_id", None) == "logged-1"
