"""The agent runtime against the real Redis: failures.

Malformed, unsigned, forged or unsupported messages are dead-lettered and counted, and the agent
keeps working; failing handlers are retried, then dead-lettered with a failed result; a failing
model gateway opens the circuit, which puts tasks aside instead of failing them, and recovery
closes it. Agents run in this process (tests/runtime_fleet.py).
"""

from __future__ import annotations

from typing import Any, cast

import orjson

from localcluster.netutil import free_port
from newfuse.adapters.taskclient import TaskClient, TaskSpec
from newfuse.wire.envelope import MessageType, encode
from newfuse.wire.signing import Channel, Signer
from newfuse.wire.tasks import Priority, ResultStatus
from newfuse_agent.gateway import GatewayClient, GatewayConfig
from newfuse_agent.handlers import HandlerError, TaskContext
from newfuse_agent.handlers.chat import chat
from newfuse_agent.queue import utc_now
from runtime_fleet import KEY, Fleet, _dead, eventually, with_fleet


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
                protocol_version="3.0",
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
