"""spec.tasks: its bounds and defaults agree with TaskPolicy; it reaches the agents' env whole."""

from __future__ import annotations

from typing import Any

import annotated_types
import pytest
from pydantic import ValidationError
from pydantic.fields import FieldInfo

from factories import fleet
from newfuse.api import tasks as api_tasks
from newfuse.api.tasks import TaskPolicySpec
from newfuse.core.pods import TASK_POLICY_FIELDS, AgentDefaults, agent_env, task_policy
from newfuse.core.revision import template_hash
from newfuse.wire.taskpolicy import ENV_VARS, TaskPolicy

DEFAULTS = AgentDefaults(redis_url="redis://r:6379/0")
ALIASES = {info.alias: name for name, info in TaskPolicySpec.model_fields.items()}
BOUND_TYPES = (annotated_types.Gt, annotated_types.Ge, annotated_types.Lt, annotated_types.Le)


def _bounds(info: FieldInfo) -> set[object]:
    return {m for m in info.metadata if isinstance(m, BOUND_TYPES)}


def _policy_type(spec_field: str) -> type:
    annotation = TaskPolicySpec.model_fields[spec_field].annotation
    return next(t for t in (int, float) if annotation == t | None)


def test_every_spec_field_maps_to_a_policy_field_and_back() -> None:
    assert set(TASK_POLICY_FIELDS) == set(TaskPolicySpec.model_fields)
    assert set(TASK_POLICY_FIELDS.values()) == set(TaskPolicy.model_fields)


@pytest.mark.parametrize(("spec_field", "policy_field"), TASK_POLICY_FIELDS.items())
def test_bounds_and_types_match_task_policy(spec_field: str, policy_field: str) -> None:
    spec_info, policy_info = (
        TaskPolicySpec.model_fields[spec_field],
        TaskPolicy.model_fields[policy_field],
    )
    assert _bounds(spec_info) == _bounds(policy_info), spec_field
    assert _policy_type(spec_field) is policy_info.annotation, spec_field
    # Unset means the policy's default; the description tells the user which.
    assert spec_info.default is None
    default = policy_info.default
    shown = f"{default:g}" if isinstance(default, float) else str(default)
    assert f"(default {shown})" in (spec_info.description or ""), spec_field


def test_the_defaults_the_cel_rules_assume_are_task_policys() -> None:
    policy = TaskPolicy()
    assert policy.claim_idle_seconds == api_tasks.DEFAULT_CLAIM_IDLE_SECONDS
    assert policy.lease_renew_seconds == api_tasks.DEFAULT_LEASE_RENEW_SECONDS
    assert policy.retry_base_seconds == api_tasks.DEFAULT_RETRY_BASE_SECONDS
    assert policy.retry_max_seconds == api_tasks.DEFAULT_RETRY_MAX_SECONDS


@pytest.mark.parametrize(
    "tasks",
    [
        {},
        {"claimIdleSeconds": 20},
        {"claimIdleSeconds": 19.9},  # renew 10 * 2 > 19.9
        {"leaseRenewSeconds": 15},
        {"leaseRenewSeconds": 15, "claimIdleSeconds": 30},
        {"leaseRenewSeconds": 0.5, "claimIdleSeconds": 1},
        {"retryBaseSeconds": 301},
        {"retryBaseSeconds": 5, "retryMaxSeconds": 4},
        {"retryMaxSeconds": 2},
        {"retryMaxSeconds": 1.9},
        {"timeoutSeconds": 0},
        {"timeoutSeconds": 86400},
        {"timeoutSeconds": 86401},
        {"resultStreamMaxLen": 99},
        {"deadLetterMaxLen": 10},
        {"maxPayloadBytes": 1023},
        {"maxPayloadBytes": 64 * 1024 * 1024 + 1},
        {"resultTTLSeconds": 60},
        {"maxClockSkewSeconds": -1},
    ],
    ids=str,
)
def test_the_api_refuses_exactly_what_task_policy_refuses(tasks: dict[str, Any]) -> None:
    try:
        spec = TaskPolicySpec.model_validate(tasks)
    except ValidationError:
        spec = None
    try:
        policy: TaskPolicy | None = TaskPolicy.model_validate(
            {TASK_POLICY_FIELDS[ALIASES[k]]: v for k, v in tasks.items()}
        )
    except ValidationError:
        policy = None
    assert (spec is None) == (policy is None), (spec, policy)
    if spec is not None:
        assert task_policy(spec) == policy


def _policy_env(**tasks: Any) -> dict[str, str]:
    env = agent_env(fleet(tasks=tasks) if tasks else fleet(), "rev1", DEFAULTS)
    return {e["name"]: e["value"] for e in env if e["name"] in ENV_VARS}


@pytest.mark.parametrize(
    ("tasks", "expected"),
    [
        ({}, {}),
        ({"timeoutSeconds": 120}, {"NEWFUSE_TASK_TIMEOUT_SECONDS": "120"}),
        (
            {"claimIdleSeconds": 2, "leaseRenewSeconds": 0.5},
            {"NEWFUSE_CLAIM_IDLE_SECONDS": "2", "NEWFUSE_LEASE_RENEW_SECONDS": "0.5"},
        ),
        (
            {"retryBaseSeconds": 1, "retryMaxSeconds": 30},
            {"NEWFUSE_RETRY_BASE_SECONDS": "1", "NEWFUSE_RETRY_MAX_SECONDS": "30"},
        ),
        ({"resultTTLSeconds": 3600}, {"NEWFUSE_RESULT_TTL_SECONDS": "3600"}),
        ({"resultStreamMaxLen": 5000}, {"NEWFUSE_RESULT_STREAM_MAX": "5000"}),
        ({"deadLetterMaxLen": 50}, {"NEWFUSE_DEAD_LETTER_MAX": "50"}),
        ({"maxPayloadBytes": 2048}, {"NEWFUSE_MAX_PAYLOAD_BYTES": "2048"}),
        ({"maxClockSkewSeconds": 30}, {"NEWFUSE_MAX_CLOCK_SKEW_SECONDS": "30"}),
    ],
    ids=str,
)
def test_spec_tasks_becomes_the_whole_policy_in_the_agent_env(
    tasks: dict[str, Any], expected: dict[str, str]
) -> None:
    env = _policy_env(**tasks)
    # Every variable is always there: set ones carry the spec, the rest TaskPolicy's defaults.
    assert env == {**TaskPolicy().to_env(), **expected}
    assert TaskPolicy.from_env(env) == task_policy(fleet(tasks=tasks).spec.tasks)


def test_policy_variables_appear_once_and_win_over_user_env() -> None:
    user = [{"name": "NEWFUSE_CLAIM_IDLE_SECONDS", "value": "99"}]
    env = agent_env(fleet(env=user, tasks={"claimIdleSeconds": 40}), "rev1", DEFAULTS)
    names = [e["name"] for e in env]
    for var in ENV_VARS:
        assert names.count(var) == (2 if var == "NEWFUSE_CLAIM_IDLE_SECONDS" else 1), var
    # Kubernetes keeps the last of duplicate names: the operator's.
    last = {e["name"]: e.get("value") for e in env}
    assert last["NEWFUSE_CLAIM_IDLE_SECONDS"] == "40"


def test_the_default_policy_env_with_default_settings() -> None:
    env = _policy_env()
    assert env["NEWFUSE_TASK_TIMEOUT_SECONDS"] == "600"
    assert env["NEWFUSE_CLAIM_IDLE_SECONDS"] == "30"
    assert env["NEWFUSE_LEASE_RENEW_SECONDS"] == "10"
    assert env["NEWFUSE_MAX_PAYLOAD_BYTES"] == str(1024 * 1024)


@pytest.mark.parametrize("tasks", [{"timeoutSeconds": 60}, {"claimIdleSeconds": 60}], ids=str)
def test_changing_spec_tasks_is_a_new_revision(tasks: dict[str, Any]) -> None:
    before = template_hash(fleet(tasks={"timeoutSeconds": 30}).spec)
    assert template_hash(fleet(tasks=tasks).spec) not in (before, template_hash(fleet().spec))


def test_unset_tasks_keeps_existing_revisions() -> None:
    # Upgrading the operator must not roll every fleet that never set spec.tasks.
    assert template_hash(fleet().spec) == "7lr78l27r4"


def test_result_ttl_uses_the_kubernetes_spelling() -> None:
    spec = TaskPolicySpec.model_validate({"resultTTLSeconds": 60})
    assert spec.to_api() == {"resultTTLSeconds": 60.0}
    with pytest.raises(ValidationError):
        TaskPolicySpec.model_validate({"resultTtlSeconds": 60})
