"""Fail closed: an agent told to require signatures without a usable key does not start.

Verifying nothing while believing it verifies is the worst outcome of a missing Secret, so the
agent process refuses to run, with one line naming the setting (what `kubectl logs` shows).
"""

from __future__ import annotations

import pytest

from agentproc import AgentProcess
from harness import RedisHandle


@pytest.mark.parametrize(
    ("key", "said"),
    [
        (None, "NEWFUSE_SIGNING_KEY is not set"),
        ("", "NEWFUSE_SIGNING_KEY is not set"),
        ("short-key", "NEWFUSE_SIGNING_KEY is shorter than 32 bytes"),
    ],
)
def test_an_agent_that_requires_signatures_without_a_usable_key_refuses_to_start(
    redis_server: RedisHandle, key: str | None, said: str
) -> None:
    env = {"NEWFUSE_REQUIRE_SIGNATURES": "true"}
    if key is not None:
        env["NEWFUSE_SIGNING_KEY"] = key
    agent = AgentProcess(redis_server.url, "hostile", "closed", env=env)
    if key is None:
        agent.env.pop("NEWFUSE_SIGNING_KEY", None)
    agent.start()
    assert agent.proc is not None
    assert agent.proc.wait(30) == 2
    lines = agent.output().strip().splitlines()
    assert len(lines) == 1, lines
    assert said in lines[0]
    assert "NEWFUSE_REQUIRE_SIGNATURES" in lines[0]
