"""The agent runtime against the real Redis: one trace from the CLI to the result, and log context.

`newfuse task submit --wait`, the agent's handling and the result write share one trace, linked
through the message's traceparent; log lines written while handling a task carry its id. Agents
run in this process (tests/runtime_fleet.py).
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from typing import Any, cast

import orjson
import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from typer.testing import CliRunner

from newfuse.adapters.redis_store import RedisStore
from newfuse.adapters.taskclient import StreamEntries, TaskSpec
from newfuse.cli import app as cli_app
from newfuse.logcontext import ContextFilter
from newfuse.wire.state import AgentState, AgentStatus, StateUpdate
from newfuse_agent.handlers import TaskContext
from newfuse_agent.queue import utc_now
from runtime_fleet import Fleet, with_fleet


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
