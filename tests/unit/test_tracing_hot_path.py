"""tracing.span: skipped on the hot path only when it would have done nothing.

Without a tracer provider a span records nothing, but one opened under a remote traceparent still
carries it, so that a result (or a child task) sent under it stays in the sender's trace. The
skip must keep that.
"""

from __future__ import annotations

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from newfuse import tracing
from newfuse.tracing import current_traceparent, span

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
tracer = trace.get_tracer("test.hot_path")


@pytest.fixture
def no_provider(monkeypatch: pytest.MonkeyPatch) -> None:
    """What an agent without NEWFUSE_TRACE_EXPORTER sees (the session installs a real one)."""
    monkeypatch.setattr(trace, "get_tracer_provider", trace.ProxyTracerProvider)


@pytest.mark.usefixtures("no_provider")
def test_without_a_provider_or_a_parent_nothing_is_opened(
    span_exporter: InMemorySpanExporter,
) -> None:
    assert not tracing.recording()
    with span(tracer, "newfuse.test", trace.SpanKind.INTERNAL, dict) as opened:
        assert opened is None, "a null context, not a span"
        assert current_traceparent() is None


@pytest.mark.usefixtures("no_provider")
def test_without_a_provider_a_remote_parent_is_still_carried() -> None:
    # What a tracer hands out while no provider is installed.
    idle = trace.NoOpTracer()
    with span(idle, "newfuse.test", trace.SpanKind.CONSUMER, dict, parent=PARENT):
        assert current_traceparent() == PARENT


def test_with_a_provider_every_span_is_recorded(span_exporter: InMemorySpanExporter) -> None:
    assert tracing.recording()
    with span(
        tracer, "newfuse.test.plain", trace.SpanKind.PRODUCER, lambda: {"newfuse.task_id": "t1"}
    ):
        pass
    with span(tracer, "newfuse.test.child", trace.SpanKind.CONSUMER, dict, parent=PARENT):
        traceparent = current_traceparent()
    finished = {s.name: s for s in span_exporter.get_finished_spans()}
    assert set(finished) >= {"newfuse.test.plain", "newfuse.test.child"}
    assert finished["newfuse.test.plain"].attributes == {"newfuse.task_id": "t1"}
    child = finished["newfuse.test.child"]
    assert child.parent is not None
    assert f"{child.parent.trace_id:032x}" in PARENT
    assert traceparent is not None
    assert traceparent.split("-")[1] == PARENT.split("-")[1]
