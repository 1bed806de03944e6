"""The fleet API's pure rules: skills, inputs, task ids, task states, cards, settings."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from a2a.types.a2a_pb2 import Message, Part, TaskState
from a2a.utils.errors import InvalidParamsError
from google.protobuf.json_format import MessageToDict, ParseDict
from google.protobuf.struct_pb2 import Value

from newfuse.cli.remote import result_of
from newfuse.fleetapi.a2amap import (
    TaskRecord,
    agent_card,
    output_part,
    skill_of,
    state_of,
    task_id_for,
    task_input,
    task_of,
    version_refusal,
)
from newfuse.fleetapi.config import SHARED, GatewayConfig, env_var
from newfuse.wire.tasks import ResultPayload, ResultStatus

AT = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
RECORD = TaskRecord(context_id="ctx", skill="echo", message_id="m1", created_at=AT)


def _data(value: Any) -> Part:
    return Part(data=ParseDict(value, Value()))


def _message(*parts: Part, **metadata: Any) -> Message:
    message = Message(message_id="m1", parts=list(parts))
    message.metadata.update(metadata)
    return message


@pytest.mark.parametrize(
    ("metadata", "capabilities", "expected"),
    [
        ({"skill": "summarize"}, ["echo", "summarize"], "summarize"),
        ({}, ["echo", "summarize"], "echo"),
        ({"other": "x"}, ["chat"], "chat"),
    ],
    ids=["asked", "first by default", "other metadata"],
)  # fmt: skip
def test_skill_of(metadata: dict[str, str], capabilities: list[str], expected: str) -> None:
    assert skill_of(_message(Part(text="x"), **metadata), capabilities) == expected


@pytest.mark.parametrize(
    ("metadata", "capabilities", "says"),
    [
        ({"skill": "translate"}, ["echo"], "message.metadata.skill: 'translate'"),
        ({}, [], "no skills"),
    ],
    ids=["not a skill", "fleet without skills"],
)  # fmt: skip
def test_skill_of_refuses(metadata: dict[str, str], capabilities: list[str], says: str) -> None:
    with pytest.raises(InvalidParamsError, match=says):
        skill_of(_message(Part(text="x"), **metadata), capabilities)


@pytest.mark.parametrize(
    ("parts", "expected"),
    [
        ([Part(text="hello")], "hello"),
        ([Part(text="a"), Part(text="b")], "a\nb"),
        ([_data({"n": 1})], {"n": 1.0}),
        ([_data([1, "x"])], [1.0, "x"]),
        ([Part(text="a"), _data({"n": 1})], [{"text": "a"}, {"data": {"n": 1.0}}]),
    ],
    ids=["text", "texts joined", "one data part", "a data list", "mixed parts"],
)  # fmt: skip
def test_task_input(parts: list[Part], expected: Any) -> None:
    assert task_input(_message(*parts)) == expected


def test_task_input_refuses_an_empty_message() -> None:
    with pytest.raises(InvalidParamsError, match=r"message\.parts"):
        task_input(_message())


@pytest.mark.parametrize(
    ("output", "expected"),
    [
        ("text", {"text": "text"}),
        ({"k": [1]}, {"data": {"k": [1.0]}, "mediaType": "application/json"}),
        (None, {"data": None, "mediaType": "application/json"}),
        (3, {"data": 3.0, "mediaType": "application/json"}),
    ],
    ids=["string", "object", "null", "number"],
)  # fmt: skip
def test_output_part(output: Any, expected: dict[str, Any]) -> None:
    assert MessageToDict(output_part(output)) == expected


def test_task_ids_are_stable_per_fleet_and_message() -> None:
    first = task_id_for("ns", "fleet", "m1")
    assert first == task_id_for("ns", "fleet", "m1")
    others = {task_id_for("ns", "fleet", "m2"), task_id_for("ns", "other", "m1")}
    others |= {task_id_for("ns2", "fleet", "m1"), task_id_for("ns/fleet", "", "m1")}
    assert first not in others
    assert len(first) == 32
    assert first.isalnum()


def _result(status: ResultStatus, **fields: Any) -> ResultPayload:
    return ResultPayload(task_id="t", status=status, agent_id="a", finished_at=AT, **fields)


@pytest.mark.parametrize(
    ("result", "state"),
    [
        (None, TaskState.TASK_STATE_SUBMITTED),
        (_result(ResultStatus.SUCCEEDED, output="x"), TaskState.TASK_STATE_COMPLETED),
        (_result(ResultStatus.FAILED, reason="timeout"), TaskState.TASK_STATE_FAILED),
        (_result(ResultStatus.FAILED, reason="canceled"), TaskState.TASK_STATE_CANCELED),
        (_result(ResultStatus.FAILED), TaskState.TASK_STATE_FAILED),
    ],
    ids=["no result", "succeeded", "timed out", "canceled", "failed without reason"],
)  # fmt: skip
def test_state_of(result: ResultPayload | None, state: TaskState) -> None:
    assert state_of(result) == state


def test_task_of_a_completed_task_carries_its_output_as_the_result_artifact() -> None:
    task = task_of("t", RECORD, _result(ResultStatus.SUCCEEDED, output={"a": "b"}))
    assert (task.id, task.context_id) == ("t", "ctx")
    assert [a.artifact_id for a in task.artifacts] == ["result"]
    assert MessageToDict(task.artifacts[0].parts[0].data) == {"a": "b"}
    assert task.status.timestamp.ToDatetime(dt.UTC) == AT


def test_task_of_a_failed_task_says_why_in_its_status_message() -> None:
    result = _result(ResultStatus.FAILED, reason="timeout", error="took 600 s")
    task = task_of("t", RECORD, result)
    assert not task.artifacts
    assert [p.text for p in task.status.message.parts] == ["timeout: took 600 s"]


def test_task_of_a_submitted_task_has_no_output_yet() -> None:
    task = task_of("t", RECORD, None)
    assert task.status.state == TaskState.TASK_STATE_SUBMITTED
    assert not task.artifacts
    assert not task.status.HasField("message")


def test_agent_card_has_a_skill_per_capability_and_one_jsonrpc_interface() -> None:
    card = agent_card("ns", "fleet", ["echo", "summarize"], "http://gw/a2a/ns/fleet/", "1.2")
    assert card.name == "fleet"
    assert card.version == "1.2"
    assert [s.id for s in card.skills] == ["echo", "summarize"]
    [interface] = card.supported_interfaces
    assert (interface.url, interface.protocol_binding, interface.protocol_version) == (
        "http://gw/a2a/ns/fleet/", "JSONRPC", "1.0",
    )  # fmt: skip
    assert card.capabilities.streaming
    assert card.capabilities.push_notifications


def test_gateway_config_round_trips_through_its_env_vars() -> None:
    env = {env_var(name): "7" for name in ("port", "send_wait_seconds")}
    env |= {env_var("redis_url"): "redis://r:1/0", env_var("signing_key"): "k" * 32}
    config = GatewayConfig.from_env(env)
    assert (config.port, config.send_wait_seconds) == (7, 7.0)
    assert config.redis_url == "redis://r:1/0"
    assert config.signing_key_bytes == b"k" * 32
    assert env_var("port") == "NEWFUSE_GATEWAY_PORT"
    assert set(SHARED) <= set(GatewayConfig.model_fields)


def test_gateway_config_names_the_variable_it_refuses() -> None:
    with pytest.raises(ValueError, match="NEWFUSE_GATEWAY_PORT"):
        GatewayConfig.from_env({"NEWFUSE_GATEWAY_PORT": "0"})


@pytest.mark.parametrize(
    ("requested", "fleet", "refused"),
    [
        ("1.0", "1.0", None),
        ("1.0.7", "1.0", None),
        (None, "1.0", None),
        ("", "1.0", None),
        ("1.1", "1.0", "this fleet speaks A2A 1.0"),
        ("0.3", "1.0", "this fleet speaks A2A 1.0"),
        ("2.0", "1.0", "this fleet speaks A2A 1.0"),
        ("x" * 500, "1.0", "is not supported"),
        ("1.0", "1.1", "not an A2A version this gateway speaks"),
        ("2.0", "2.0", "not an A2A version this gateway speaks"),
        ("1.0", "garbage", "not an A2A version this gateway speaks"),
    ],
)
def test_version_negotiation_follows_the_fleet(
    requested: str | None, fleet: str, refused: str | None
) -> None:
    found = version_refusal(requested, fleet)
    if refused is None:
        assert found is None
    else:
        assert found is not None
        assert refused in found
        assert len(found) < 200, "a hostile header is not echoed whole"


@pytest.mark.parametrize(
    "result",
    [
        _result(ResultStatus.SUCCEEDED, output={"a": ["b", 1]}),
        _result(ResultStatus.SUCCEEDED, output="plain text"),
        _result(ResultStatus.FAILED, reason="timeout", error="took 600 s"),
    ],
    ids=["data", "text", "failed"],
)
def test_the_cli_reads_back_the_result_the_gateway_serves(result: ResultPayload) -> None:
    back = result_of(task_of("t", RECORD, result))
    assert back is not None
    kept = {"status", "output", "agent_id", "attempts", "latency_ms", "reason", "finished_at"}
    assert back.model_dump(include=kept) == result.model_dump(include=kept)
    assert result_of(task_of("t", RECORD, None)) is None
