"""The `chat` handler against a stub gateway on 127.0.0.1, and the gateway's configuration.

The handler takes a string, a prompt or messages, refuses malformed input without calling the
gateway, and fails without retry when the agent has no gateway. The configuration comes from
NEWFUSE_GATEWAY_* variables, and a bad value names its variable.
"""

from __future__ import annotations

from typing import Any

import pytest

from gateway_calls import config, expect_error, run
from gateway_stub import MODEL, USAGE, Reply, stub_gateway
from newfuse_agent.gateway import GatewayClient, GatewayConfig
from newfuse_agent.handlers import TaskContext, load_builtin_handlers
from newfuse_agent.handlers.chat import NO_GATEWAY_MESSAGE, chat

INPUTS = {
    "a string": ("hello", [{"role": "user", "content": "hello"}]),
    "a prompt": ({"prompt": "hello"}, [{"role": "user", "content": "hello"}]),
    "messages": (
        {
            "messages": [
                {"role": "system", "content": "be brief"},
                {"role": "user", "content": "hi"},
            ]
        },
        [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}],
    ),
}


def context(gateway: GatewayClient | None) -> TaskContext:
    return TaskContext(
        agent_id="agent-0",
        fleet="fleet",
        namespace="ns",
        revision="rev",
        capabilities=("chat",),
        gateway=gateway,
    )


@pytest.mark.parametrize(("task_input", "messages"), INPUTS.values(), ids=INPUTS.keys())
def test_chat_handler_input_shapes(task_input: Any, messages: list[dict[str, str]]) -> None:
    async def scenario() -> None:
        async with stub_gateway(Reply.OK) as stub:
            client = GatewayClient(config(stub.url))
            try:
                output = await chat(task_input, context(client))
            finally:
                await client.aclose()
            assert stub.bodies == [{"model": MODEL, "messages": messages}]
            assert output == {
                "content": f"echo: {messages[-1]['content']}",
                "model": MODEL,
                "usage": USAGE,
            }

    run(scenario())


BAD_INPUTS: dict[str, Any] = {
    "a number": 42,
    "null": None,
    "an empty object": {},
    "a prompt that is not a string": {"prompt": 3},
    "no messages": {"messages": []},
    "messages not a list": {"messages": "hi"},
    "a message without content": {"messages": [{"role": "user"}]},
    "a message with non-string content": {"messages": [{"role": "user", "content": 1}]},
    "a message that is not an object": {"messages": ["hi"]},
}


@pytest.mark.parametrize("task_input", BAD_INPUTS.values(), ids=BAD_INPUTS.keys())
def test_chat_handler_refuses_malformed_input_without_calling(task_input: Any) -> None:
    async def scenario() -> None:
        async with stub_gateway(Reply.OK) as stub:
            client = GatewayClient(config(stub.url))
            try:
                error = await expect_error(chat(task_input, context(client)))
            finally:
                await client.aclose()
            assert not error.retryable
            assert stub.requests == 0

    run(scenario())


def test_chat_handler_without_a_gateway() -> None:
    error = run(expect_error(chat("hello", context(None))))
    assert str(error) == NO_GATEWAY_MESSAGE
    assert not error.retryable


def test_chat_handler_is_registered() -> None:
    assert load_builtin_handlers()["chat"] is chat


ENVS: dict[str, tuple[dict[str, str], GatewayConfig | None]] = {
    "no endpoint: no gateway": ({"NEWFUSE_GATEWAY_MODEL": "m"}, None),
    "endpoint only": (
        {"NEWFUSE_GATEWAY_ENDPOINT": "http://gw/v1"},
        GatewayConfig(endpoint="http://gw/v1"),
    ),
    "everything": (
        {
            "NEWFUSE_GATEWAY_ENDPOINT": "http://gw/v1/",
            "NEWFUSE_GATEWAY_MODEL": "m",
            "NEWFUSE_GATEWAY_API_KEY": "k",
            "NEWFUSE_GATEWAY_TIMEOUT_SECONDS": "7.5",
            "NEWFUSE_GATEWAY_RATE_LIMIT": "20",
        },
        GatewayConfig(
            endpoint="http://gw/v1/",
            model="m",
            api_key="k",
            timeout_seconds=7.5,
            rate_limit_per_second=20.0,
        ),
    ),
}


@pytest.mark.parametrize(("env", "expected"), ENVS.values(), ids=ENVS.keys())
def test_config_from_env(env: dict[str, str], expected: GatewayConfig | None) -> None:
    assert GatewayConfig.from_env(env) == expected


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("NEWFUSE_GATEWAY_TIMEOUT_SECONDS", "soon"),
        ("NEWFUSE_GATEWAY_TIMEOUT_SECONDS", "0"),
        ("NEWFUSE_GATEWAY_RATE_LIMIT", "-1"),
        ("NEWFUSE_GATEWAY_RATE_LIMIT", "nan"),
    ],
)
def test_bad_config_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ValueError, match=name):
        GatewayConfig.from_env({"NEWFUSE_GATEWAY_ENDPOINT": "http://gw/v1", name: value})


def test_completions_url_and_no_limiter_without_redis() -> None:
    cfg = GatewayConfig(endpoint="http://gw/v1/", rate_limit_per_second=5.0)
    assert cfg.completions_url == "http://gw/v1/chat/completions"

    async def scenario() -> None:
        client = GatewayClient(cfg)
        assert client.limiter is None
        await client.aclose()

    run(scenario())
