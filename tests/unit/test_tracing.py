"""Every reconcile is an OpenTelemetry span carrying the fleet key (checked in memory)."""

from __future__ import annotations

import asyncio
from typing import Any, cast

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from newfuse.config import OperatorConfig
from newfuse.runtime.controller import Controller

pytestmark = pytest.mark.asyncio


class RecordingController(Controller):
    """A controller whose reconcile only records the key (no API server, no Redis)."""

    reconciled: list[str]

    async def reconcile(self, key: str) -> None:
        self.reconciled.append(key)
        if key == "ns/broken":
            raise RuntimeError("boom")


async def test_each_reconcile_is_a_span_and_errors_are_recorded(
    span_exporter: InMemorySpanExporter,
) -> None:
    exporter = span_exporter
    async with asyncio.timeout(10):
        controller = RecordingController(
            OperatorConfig(workers=1), cast(Any, None), cast(Any, None)
        )
        controller.reconciled = []
        worker = asyncio.create_task(controller._worker(0))
        for key in ("ns/a", "ns/broken", "ns/b"):
            controller.queue.add(key)
        while len(controller.reconciled) < 3:
            await asyncio.sleep(0.01)
        worker.cancel()
        controller.queue.close()
    assert controller.reconciled == ["ns/a", "ns/broken", "ns/b"]
    spans = {
        s.attributes["newfuse.fleet"]: s
        for s in exporter.get_finished_spans()
        if s.name == "reconcile"
    }
    assert set(spans) == {"ns/a", "ns/broken", "ns/b"}
    assert spans["ns/broken"].status.status_code is trace.StatusCode.ERROR
    assert spans["ns/a"].status.status_code is not trace.StatusCode.ERROR
