"""The agent pod's environment round-trips: what the operator writes is what the agent reads.

A pod is built for a fleet that sets every option, its environment is resolved as the kubelet
would (field references, Secret keys), and the agent's own readers parse it. A name changed on
either side alone (in `core/pods.py`, the agent's config, or `newfuse.wire.agentenv`) fails here.
"""

from __future__ import annotations

from typing import Any

import pytest

from factories import fleet
from newfuse.core.pods import AgentDefaults, build_pod
from newfuse.wire.agentenv import AgentEnv
from newfuse.wire.taskpolicy import TaskPolicy
from newfuse_agent import config as agent_config
from newfuse_agent import gateway_config
from newfuse_agent.config import AgentConfig
from newfuse_agent.gateway_config import GatewayConfig

POD = {"metadata.name": "demo-rev1-0", "metadata.namespace": "ns"}
SECRETS = {
    ("redis", "url"): "redis://user:pw@redis.example:6379/0",
    ("signing", "key"): "k" * 40,
    ("signing-old", "key"): "o" * 40,
    ("sealing", "key"): "s" * 40,
    ("sealing-old", "key"): "t" * 40,
    ("llm", "token"): "sk-test",
    ("memory-pg", "dsn"): "postgresql://nf_x:pw@pg.example:5432/memory",
}


def _ref(name: str, key: str) -> dict[str, str]:
    return {"name": name, "key": key}


EVERY_OPTION: dict[str, Any] = {
    "capabilities": ["summarize", "translate"],
    "concurrency": 7,
    "protocolVersion": "1.3",
    "redis": {"urlSecretRef": _ref("redis", "url"), "caSecretRef": _ref("redis", "ca")},
    "signing": {
        "keySecretRef": _ref("signing", "key"),
        "acceptKeySecretRef": _ref("signing-old", "key"),
        "required": True,
    },
    "encryption": {
        "keySecretRef": _ref("sealing", "key"),
        "acceptKeySecretRef": _ref("sealing-old", "key"),
    },
    "gateway": {
        "endpoint": "http://llm:8080/v1",
        "model": "small",
        "rateLimitPerSecond": 2.5,
        "timeoutSeconds": 45,
        "credentialsSecretRef": _ref("llm", "token"),
        "prices": [{"model": "small", "inputPerMillionTokens": 0.5, "outputPerMillionTokens": 2}],
    },
    "tasks": {"timeoutSeconds": 90, "retryBaseSeconds": 3},
    "review": {
        "handlers": ["draft"],
        "samplePercent": 25,
        "timeoutSeconds": 600,
        "onTimeout": "escalate",
    },
    "memory": {
        "model": "all-MiniLM-L6-v2@int8-onnx-1.0.0",
        "maxItems": 500,
        "ttlSeconds": 60,
        "postgres": {"urlSecretRef": _ref("memory-pg", "dsn")},
    },
}


def _resolved(entries: list[dict[str, Any]]) -> dict[str, str]:
    """The container's environment as the kubelet gives it to the process."""
    env = {}
    for entry in entries:
        source = entry.get("valueFrom")
        if source is None:
            env[entry["name"]] = entry["value"]
        elif "fieldRef" in source:
            env[entry["name"]] = POD[source["fieldRef"]["fieldPath"]]
        else:
            ref = source["secretKeyRef"]
            env[entry["name"]] = SECRETS[(ref["name"], ref["key"])]
    return env


def _pod_env(**spec: Any) -> dict[str, str]:
    manifest = build_pod(fleet(**spec), "rev1", 0, AgentDefaults(redis_url="redis://r:6379/0"))
    entries = manifest["spec"]["containers"][0]["env"]
    assert {type(e["name"]) for e in entries} == {str}, "plain strings: YAML dumpers refuse enums"
    return _resolved(entries)


def test_every_option_written_by_the_operator_is_read_back_by_the_agent() -> None:
    env = _pod_env(**EVERY_OPTION)
    agent = AgentConfig.from_env(env)
    assert (agent.agent_id, agent.namespace, agent.fleet, agent.revision) == (
        "demo-rev1-0", "ns", "demo", "rev1",
    )  # fmt: skip
    assert agent.capabilities == ("summarize", "translate")
    assert (agent.concurrency, agent.protocol_version) == (7, "1.3")
    assert agent.redis_url == SECRETS[("redis", "url")]
    assert agent.redis_ca_file is not None
    assert (agent.signing_key, agent.signing_accept) == ("k" * 40, "o" * 40)
    assert agent.require_signatures is True
    assert (agent.encryption_key, agent.encryption_accept) == ("s" * 40, "t" * 40)
    assert (agent.tasks.default_timeout_seconds, agent.tasks.retry_base_seconds) == (90, 3)
    assert (agent.review.handlers, agent.review.sample_percent) == (("draft",), 25)
    assert (agent.review.timeout_seconds, agent.review.on_timeout.value) == (600, "escalate")
    assert (agent.memory_model, agent.memory_max_items, agent.memory_ttl_seconds) == (
        "all-MiniLM-L6-v2@int8-onnx-1.0.0", 500, 60,
    )  # fmt: skip
    assert agent.memory_postgres_url == SECRETS[("memory-pg", "dsn")]
    assert SECRETS[("memory-pg", "dsn")] not in repr(agent), "a credential stays out of logs"
    gateway = GatewayConfig.from_env(env)
    assert gateway is not None
    assert (gateway.endpoint, gateway.model, gateway.api_key) == (
        "http://llm:8080/v1", "small", "sk-test",
    )  # fmt: skip
    assert (gateway.timeout_seconds, gateway.rate_limit_per_second) == (45, 2.5)
    [price] = gateway.prices
    assert (price.model, price.input_per_million_tokens, price.output_per_million_tokens) == (
        "small", 0.5, 2,
    )  # fmt: skip


def test_the_operator_writes_only_names_the_agent_reads() -> None:
    written = set(_pod_env(**EVERY_OPTION))
    read = set(agent_config._ENV) | {
        gateway_config.ENV_ENDPOINT, gateway_config.ENV_MODEL, gateway_config.ENV_API_KEY,
        gateway_config.ENV_TIMEOUT, gateway_config.ENV_RATE_LIMIT, gateway_config.ENV_PRICES,
    }  # fmt: skip
    policy = set(TaskPolicy().to_env())
    assert written - read - policy == set()
    assert read == set(AgentEnv), "every name has its home in newfuse.wire.agentenv"
    # What an agent may be given by hand (spec.env), never by the operator.
    by_hand = {AgentEnv.HTTP_ADDRESS, AgentEnv.DRAIN_GRACE_SECONDS, AgentEnv.LOG_LEVEL}
    by_hand |= {AgentEnv.FAULT_RATE, AgentEnv.TRACE_EXPORTER, AgentEnv.ECHO_CASE}
    by_hand |= {AgentEnv.PROTOCOL_SPEAKS}
    assert set(AgentEnv) - written == by_hand


@pytest.mark.parametrize("version", ["3.0", "0.9"])
def test_a_protocol_the_image_does_not_speak_stops_the_agent_naming_the_field(
    version: str,
) -> None:
    env = _pod_env(protocolVersion=version)
    named = rf"NEWFUSE_PROTOCOL_VERSION={version} .*spec\.protocolVersion"
    with pytest.raises(ValueError, match=named):
        AgentConfig.from_env(env)
