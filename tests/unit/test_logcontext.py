"""JSON log lines carry the namespace/fleet (operator) they are about, even under concurrency."""

from __future__ import annotations

import asyncio
import io
import json
import logging
from collections.abc import Iterator
from typing import Any, cast

import kopf
import pytest

from newfuse import logcontext
from newfuse.config import LogFormat, OperatorConfig
from newfuse.observability import configure_logging
from newfuse.runtime.controller import Controller


@pytest.fixture
def json_lines(monkeypatch: pytest.MonkeyPatch) -> Iterator[io.StringIO]:
    """The operator's real log configuration, writing into a buffer."""
    buffer = io.StringIO()
    monkeypatch.setattr("sys.stdout", buffer)
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure_logging(LogFormat.JSON, "INFO")
    yield buffer
    root.handlers[:], _ = saved
    root.setLevel(saved[1])


def _records(buffer: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in buffer.getvalue().splitlines() if line.strip()]


class LoggingController(Controller):
    """A controller whose reconcile only logs (and fails for one fleet)."""

    async def reconcile(self, key: str) -> None:
        await asyncio.sleep(0)  # let other workers interleave
        logging.getLogger("newfuse.test").info("reconciling")
        if key.endswith("/broken"):
            raise RuntimeError("boom")


@pytest.mark.asyncio
async def test_every_reconcile_line_names_its_namespace_and_fleet(json_lines: io.StringIO) -> None:
    async with asyncio.timeout(10):
        controller = LoggingController(OperatorConfig(workers=2), cast(Any, None), cast(Any, None))
        workers = [asyncio.create_task(controller._worker(i)) for i in range(2)]
        for key in ("team-a/alpha", "team-b/beta", "team-a/broken"):
            controller.queue.add(key)
        while len(_records(json_lines)) < 4:
            await asyncio.sleep(0.01)
        for worker in workers:
            worker.cancel()
        controller.queue.close()
    lines = _records(json_lines)
    seen = {(r["namespace"], r["fleet"]) for r in lines if r["message"] == "reconciling"}
    assert seen == {("team-a", "alpha"), ("team-b", "beta"), ("team-a", "broken")}
    [failure] = [r for r in lines if "failed" in r["message"]]
    assert (failure["namespace"], failure["fleet"], failure["level"]) == (
        "team-a",
        "broken",
        "WARNING",
    )


def test_bound_fields_nest_and_unwind(json_lines: io.StringIO) -> None:
    log = logging.getLogger("newfuse.test")
    with logcontext.bound(namespace="ns", fleet="f"):
        with logcontext.bound(revision="r1", task_id=None):
            log.info("inner")
        log.info("outer", extra={"fleet": "explicit"})
    log.info("none")
    inner, outer, none = _records(json_lines)
    assert (inner["namespace"], inner["fleet"], inner["revision"]) == ("ns", "f", "r1")
    assert "task_id" not in inner
    assert outer["fleet"] == "explicit", "extra= wins over the bound value"
    assert "revision" not in outer
    assert "namespace" not in none


def test_json_logs_survive_kopfs_extras(capsys: pytest.CaptureFixture[str]) -> None:
    """kopf logs its settings object as an extra: the line must still be one JSON object."""
    root = logging.getLogger()
    saved = (root.handlers[:], root.level)
    try:
        configure_logging(LogFormat.JSON, "INFO")
        # A warning: below it, kopf.objects is quiet once the operator tuned kopf (tune()).
        logging.getLogger("kopf.objects").warning(
            "Handler succeeded",
            extra={"settings": kopf.OperatorSettings(), "k8s_ref": {"a": 1}, "k8s_skip": 0},
        )
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    out, err = capsys.readouterr()
    assert "Logging error" not in err
    [line] = [json.loads(raw) for raw in out.splitlines() if "Handler succeeded" in raw]
    assert line["message"] == "Handler succeeded"


def test_probe_requests_are_not_logged_unless_debugging() -> None:
    access = logging.getLogger("aiohttp.access")
    configure_logging(LogFormat.JSON, "INFO")
    assert not access.isEnabledFor(logging.INFO), "a line per kubelet probe is noise"
    assert access.isEnabledFor(logging.WARNING)
    configure_logging(LogFormat.JSON, "DEBUG")
    assert access.isEnabledFor(logging.INFO)
    configure_logging(LogFormat.JSON, "INFO")
