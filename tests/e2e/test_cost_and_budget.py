"""Model cost end to end: the cost gate rolls back a pricier canary; a hard budget refuses tasks.

Agents are the operator's (pod runner processes) calling stub model gateways on 127.0.0.1 with the
built-in `chat` handler; the stubs report token usage like a real gateway, priced by the fleet's
spec.gateway.prices. Gate settings are the defaults (60 s soak, 20 tasks, +50% cost).
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from clitool import cli
from gateway_stub import Reply, Stub, stub_gateway
from harness import Fleets, Kubectl, RedisHandle, start_fleet, submit
from localcluster import wait_for
from localcluster.podrunner import PodRunnerProcess
from rollouts import Traffic, rolled_back_to

PRICES = [{"model": "stub-model", "inputPerMillionTokens": 500, "outputPerMillionTokens": 1500}]


class ThreadedStub:
    """A stub gateway served from its own thread, for agent processes to call."""

    def __init__(self, prompt_tokens: int, completion_tokens: int) -> None:
        self.usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        self.stub: Stub | None = None
        self._ready, self._stop = threading.Event(), threading.Event()
        self._thread = threading.Thread(target=lambda: asyncio.run(self._serve()), daemon=True)

    async def _serve(self) -> None:
        async with stub_gateway(Reply.OK) as stub:
            stub.usage = self.usage
            self.stub = stub
            self._ready.set()
            while not self._stop.is_set():
                await asyncio.sleep(0.1)

    def __enter__(self) -> ThreadedStub:
        self._thread.start()
        assert self._ready.wait(10), "the stub gateway did not start"
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    @property
    def url(self) -> str:
        assert self.stub is not None
        return self.stub.url


@pytest.fixture
def gateways() -> Iterator[tuple[ThreadedStub, ThreadedStub]]:
    """A gateway answering in 100 tokens, and one answering the same in 300."""
    with ThreadedStub(60, 40) as normal, ThreadedStub(180, 120) as heavy:
        yield normal, heavy


def _gateway(url: str) -> dict[str, Any]:
    return {"endpoint": url, "model": "stub-model", "prices": PRICES}


def test_a_canary_using_three_times_the_tokens_is_rolled_back_by_the_cost_gate(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
    kubectl: Kubectl,
    gateways: tuple[ThreadedStub, ThreadedStub],
) -> None:
    normal, heavy = gateways
    ns = fleets.namespace
    body = start_fleet(
        fleets, pod_runner, redis_client, "costly", 2, fast=False,
        rollout={"strategy": "Phased"}, gateway=_gateway(normal.url),
    )  # fmt: skip
    stable = body["status"]["updateRevision"]

    with Traffic(redis_server.url, ns, "costly", per_second=30, handler="chat"):
        fleets.patch_spec("costly", gateway=_gateway(heavy.url))
        rolled = rolled_back_to(fleets, "costly", stable, "the cost gate's rollback")
    verdict = rolled["lastVerdict"]
    print("figures:", verdict["reason"], verdict["measured"])  # shown with -s
    measured = verdict["measured"]
    assert verdict["result"] == "Failed"
    assert measured["errorRate"] == 0.0, "no task failed: only the bill went up"
    assert measured["tokensPerTask"] == pytest.approx(300, rel=0.05)
    assert measured["stableTokensPerTask"] == pytest.approx(100, rel=0.05)
    # 60 x 500 + 40 x 1500 per million = 0.09 a task on stable, three times that on the canary.
    assert measured["stableCostPerTask"] == pytest.approx(0.09, rel=0.05)
    assert measured["costPerTask"] == pytest.approx(0.27, rel=0.05)
    assert "cost per successful task" in verdict["reason"]
    events = json.loads(kubectl("get", "events", "-n", ns, "-o", "json"))["items"]
    assert any(
        e["reason"] == "RolledBack" and "cost per successful task" in e["message"] for e in events
    )


def test_a_hard_budget_refuses_new_tasks_with_a_clear_error_and_an_event(
    fleets: Fleets,
    pod_runner: PodRunnerProcess,
    redis_server: RedisHandle,
    redis_client: redis.Redis,
    kubectl: Kubectl,
    gateways: tuple[ThreadedStub, ThreadedStub],
) -> None:
    normal, _ = gateways
    ns = fleets.namespace
    limits = {"softTokens": 500, "hardTokens": 1000}
    start_fleet(
        fleets, pod_runner, redis_client, "capped", 1, fast=False,
        gateway=_gateway(normal.url), budget=limits,
    )  # fmt: skip

    def budget(state: str) -> dict[str, Any]:
        def reached() -> dict[str, Any] | None:
            found: dict[str, Any] = fleets.get("capped")["status"].get("budget") or {}
            return found if found.get("state") == state else None

        return wait_for(reached, 30, what=f"status.budget to say {state}")

    for i in range(10):  # 100 tokens each: the fifth reaches the soft limit, the tenth the hard
        printed = submit("capped", ns, redis_server.url, "--handler", "chat",
                         "--payload", f"question {i}", "--wait", "--timeout", "60")  # fmt: skip
        assert "succeeded" in printed
        if i == 4:
            assert budget("SoftExceeded")["tokens"] == 500
    refused = cli(
        "task", "submit", "capped", "-n", ns, "--handler", "chat", "--payload", "one more",
        redis_url=redis_server.url,
    )  # fmt: skip
    assert refused.returncode == 1
    assert (
        "fleet " + ns + "/capped is over its hard budget for today (UTC): 1,000 tokens of "
        "spec.budget.hardTokens 1,000 spent; new tasks are refused"
    ) in refused.stderr
    status = budget("HardExceeded")
    print("figures:", status)  # shown with -s
    assert status["tokens"] == 1000
    assert status["cost"] == pytest.approx(0.9)
    events = json.loads(kubectl("get", "events", "-n", ns, "-o", "json"))["items"]
    mine = [e for e in events if e["involvedObject"]["name"] == "capped"]
    [soft] = [e for e in mine if e["reason"] == "BudgetSoftExceeded"]
    [hard] = [e for e in mine if e["reason"] == "BudgetHardExceeded"]
    assert "tokens >= spec.budget.softTokens 500" in soft["message"]
    assert "1,000 tokens >= spec.budget.hardTokens 1,000" in hard["message"]
    assert hard["type"] == "Warning"
