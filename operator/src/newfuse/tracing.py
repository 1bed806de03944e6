"""OpenTelemetry plumbing shared by the operator, the CLI and the agents.

A task's trace crosses processes through Redis: whoever writes an envelope puts the W3C
`traceparent` of its current span into `metadata.traceparent`, and whoever reads it continues
that trace. The wire models stay free of OpenTelemetry (they only carry the string); this module
turns it into and out of span contexts.
"""

from __future__ import annotations

from enum import StrEnum

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()


class TraceExporter(StrEnum):
    """Where spans go."""

    NONE = "none"
    CONSOLE = "console"
    OTLP = "otlp"


def configure_tracing(exporter: TraceExporter, service_name: str) -> None:
    """Install a tracer provider; spans are dropped unless an exporter is chosen.

    OTLP is configured the standard way (OTEL_EXPORTER_OTLP_ENDPOINT, _HEADERS, ...), so any
    collector works without NewFuse-specific settings.
    """
    if exporter is TraceExporter.NONE:
        return
    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    span_exporter: SpanExporter
    if exporter is TraceExporter.CONSOLE:
        span_exporter = ConsoleSpanExporter()
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        span_exporter = OTLPSpanExporter()
    provider.add_span_processor(BatchSpanProcessor(span_exporter))
    trace.set_tracer_provider(provider)


def current_traceparent() -> str | None:
    """The W3C traceparent of the current span, or None when nothing is being traced."""
    carrier: dict[str, str] = {}
    _PROPAGATOR.inject(carrier)
    return carrier.get("traceparent")


def context_from(traceparent: str | None) -> Context | None:
    """The remote span context a message carried, as a parent for the reader's span."""
    if not traceparent:
        return None
    return _PROPAGATOR.extract({"traceparent": traceparent})
