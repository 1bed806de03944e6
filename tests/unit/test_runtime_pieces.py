"""Metrics folding, versions, operator configuration and the work queue."""

from __future__ import annotations

import asyncio
import datetime as dt

import pytest

from factories import NOW
from newfuse.adapters.redis_connect import redacted
from newfuse.api.v1alpha1 import NewFuseAgent, SecretKeyRef
from newfuse.config import LogFormat, OperatorConfig, secret_key_ref
from newfuse.core.metrics import fold_agent_states, legacy_agents
from newfuse.runtime.controller import is_older
from newfuse.runtime.workqueue import WorkQueue
from newfuse.wire.state import AgentMetrics, AgentState, AgentStatus, StateUpdate, next_version

TIMEOUT = dt.timedelta(seconds=30)


def update(
    agent: str, completed: int, failed: int, age_s: float, status: AgentStatus = AgentStatus.ACTIVE
) -> StateUpdate:
    return StateUpdate(
        agent_id=agent,
        state=AgentState(
            id=agent,
            status=status,
            metrics=AgentMetrics(
                tasks_completed=completed,
                tasks_failed=failed,
                requests_handled=completed + failed,
                last_active=NOW - dt.timedelta(seconds=age_s),
            ),
        ),
        version=1,
        timestamp=NOW - dt.timedelta(seconds=age_s),
    )


@pytest.mark.parametrize(
    ("updates", "live", "expected"),
    [
        ([], set(), (0, 0, 0.0, 0, 0)),
        ([update("a", 8, 2, 1)], {"a"}, (8, 2, 0.2, 1, 0)),
        ([update("a", 5, 0, 1), update("b", 5, 0, 60)], {"a", "b"}, (10, 0, 0.0, 1, 1)),
        # A departed pod's counts stay in the totals but it can no longer be stale.
        ([update("gone", 4, 0, 600), update("a", 1, 1, 2)], {"a"}, (5, 1, round(1 / 6, 4), 1, 0)),
        ([update("a", 1, 0, 300, AgentStatus.INACTIVE)], {"a"}, (1, 0, 0.0, 0, 0)),
    ],
    ids=["nothing", "one agent", "one stale", "departed pod", "inactive is not stale"],
)
def test_fold(
    updates: list[StateUpdate], live: set[str], expected: tuple[int, int, float, int, int]
) -> None:
    m = fold_agent_states(updates, live, NOW, TIMEOUT)
    assert (
        m.tasks_completed,
        m.tasks_failed,
        m.error_rate,
        m.reporting_agents,
        m.stale_agents,
    ) == expected
    if updates:
        assert m.last_active == max(
            u.state.metrics.last_active for u in updates if u.state.metrics.last_active
        )


def test_versions_only_grow() -> None:
    assert next_version(0, NOW) == int(NOW.timestamp() * 1000)
    assert next_version(10**15, NOW) == 10**15 + 1, (
        "a clock behind the last version still moves forward"
    )


def test_config_from_env() -> None:
    config = OperatorConfig.from_env(
        {"NEWFUSE_NAMESPACES": "a, b,", "NEWFUSE_WORKERS": "4", "NEWFUSE_LOG_FORMAT": "text"}
    )
    assert config.namespaces == ("a", "b")
    assert config.workers == 4
    assert config.log_format is LogFormat.TEXT
    assert config.effective_agent_redis_url == config.redis_url


def test_bad_config_names_the_variable() -> None:
    with pytest.raises(ValueError, match="NEWFUSE_WORKERS"):
        OperatorConfig.from_env({"NEWFUSE_WORKERS": "0"})


async def _drain(queue: WorkQueue, n: int) -> list[str]:
    return [await asyncio.wait_for(queue.get(), 1) for _ in range(n)]


@pytest.mark.asyncio
async def test_queue_deduplicates_and_never_hands_out_a_key_twice() -> None:
    q = WorkQueue()
    for key in ["a", "b", "a", "a"]:
        q.add(key)
    assert await _drain(q, 2) == ["a", "b"]
    q.add("a")  # re-added while "a" is being processed
    assert len(q) == 0, "not handed out while processing"
    q.done("a")
    assert await _drain(q, 1) == ["a"]
    q.done("a")
    q.done("b")
    assert len(q) == 0


@pytest.mark.asyncio
async def test_queue_delays_and_backoff() -> None:
    q = WorkQueue(base_delay=0.01, max_delay=0.04)
    q.add_after("x", 10)
    q.add_after("x", 0.01)  # the earlier schedule wins
    assert await _drain(q, 1) == ["x"]
    q.done("x")
    assert [q.retry("y") for _ in range(4)] == [0.01, 0.02, 0.04, 0.04]
    q.forget("y")
    assert q.retry("y") == 0.01
    assert await _drain(q, 1) == ["y"]
    q.close()


@pytest.mark.parametrize(
    ("status", "agent", "revision", "retired"),
    [
        (AgentStatus.INACTIVE, "gone", "old", True),
        (AgentStatus.ACTIVE, "gone", "old", False),
        (AgentStatus.INACTIVE, "live", "old", False),
        (AgentStatus.INACTIVE, "gone", "current", False),
    ],
    ids=["drained legacy agent", "still active", "pod still exists", "revision still runs"],
)
def test_legacy_agents(status: AgentStatus, agent: str, revision: str, retired: bool) -> None:
    update = StateUpdate(
        agent_id=agent,
        state=AgentState(id=agent, status=status, revision=revision),
        version=1,
        timestamp=NOW,
    )
    assert (legacy_agents([update], {"live"}, {"current"}) == [update]) is retired


@pytest.mark.parametrize(
    ("event_meta", "older"),
    [
        ({"uid": "u1", "resourceVersion": "99"}, True),
        ({"uid": "u1", "resourceVersion": "100"}, False),
        ({"uid": "u1", "resourceVersion": "101"}, False),
        ({"uid": "u2", "resourceVersion": "5"}, False),  # a new fleet of the same name
        ({"uid": "u1", "resourceVersion": "opaque"}, False),
        ({"uid": "u1"}, False),
    ],
)
def test_only_strictly_older_versions_of_the_same_fleet_are_stale(
    event_meta: dict[str, str], older: bool
) -> None:
    cached = NewFuseAgent.model_validate(
        {
            "apiVersion": "newfuse.io/v1alpha1",
            "kind": "NewFuseAgent",
            "metadata": {"name": "f", "namespace": "ns", "uid": "u1", "resourceVersion": "100"},
            "spec": {"image": "a:1"},
        }
    )
    assert is_older(event_meta, cached) is older


@pytest.mark.parametrize(
    ("env", "error"),
    [
        ({"NEWFUSE_REDIS_URL": "redis://:s3cret@redis:6379/0"}, "NEWFUSE_AGENT_REDIS_SECRET"),
        ({"NEWFUSE_AGENT_REDIS_URL": "rediss://a:pw@redis:6380/0"}, "NEWFUSE_AGENT_REDIS_SECRET"),
        ({"NEWFUSE_AGENT_REDIS_SECRET": "Not_A_Name/url"}, "NEWFUSE_AGENT_REDIS_SECRET"),
        ({"NEWFUSE_AGENT_SIGNING_SECRET": "no-key-part"}, "NEWFUSE_AGENT_SIGNING_SECRET"),
        ({"NEWFUSE_LEASE_DURATION_SECONDS": "5"}, "NEWFUSE_RENEW_DEADLINE_SECONDS"),
    ],
)  # fmt: skip
def test_unsafe_operator_configuration_is_refused_by_name(env: dict[str, str], error: str) -> None:
    with pytest.raises(ValueError, match=error):
        OperatorConfig.from_env(env)


def test_credentials_are_accepted_when_agents_read_them_from_a_secret() -> None:
    config = OperatorConfig.from_env(
        {
            "NEWFUSE_REDIS_URL": "rediss://operator:pw@redis:6380/0",
            "NEWFUSE_AGENT_REDIS_SECRET": "newfuse-redis/url",
            "NEWFUSE_SIGNING_KEY": "k" * 32,
        }
    )
    assert secret_key_ref(config.agent_redis_secret) == SecretKeyRef(
        name="newfuse-redis", key="url"
    )
    assert "k" * 32 not in repr(config), "the signing key never shows in reprs or logs"


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://:pw@redis:6379/0", "redis://:***@redis:6379/0"),
        ("rediss://agent:pw@redis:6380/1", "rediss://agent:***@redis:6380/1"),
    ],
)
def test_redis_urls_are_logged_without_passwords(url: str, shown: str) -> None:
    assert redacted(url) == shown
