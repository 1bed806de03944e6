"""OpenTelemetry plumbing shared by the operator, the CLI and the agents.

A task's trace crosses processes through Redis: whoever writes an envelope puts the W3C
`traceparent` of its current span into `metadata.traceparent`, and whoever reads it continues
that trace. The wire models stay free of OpenTelemetry (they only carry the string); this module
turns it into and out of span contexts.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from enum import StrEnum

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.environment_variables import OTEL_PYTHON_TRACER_PROVIDER
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

_PROPAGATOR = TraceContextTextMapPropagator()
# What OpenTelemetry hands out while no SDK provider is installed: spans that record nothing.
_NON_RECORDING = (trace.ProxyTracerProvider, trace.NoOpTracerProvider)
_PROVIDER_IN_ENV = OTEL_PYTHON_TRACER_PROVIDER in os.environ
_UNKNOWN = object()


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


def recording() -> bool:
    """Whether a tracer provider is installed (by configure_tracing, or by the embedding app)."""
    # Until a provider is set, get_tracer_provider() looks its environment variable up on every
    # call: a cost on every task's hot path. Unset and not named there means not recording.
    if getattr(trace, "_TRACER_PROVIDER", _UNKNOWN) is None and not _PROVIDER_IN_ENV:
        return False
    return not isinstance(trace.get_tracer_provider(), _NON_RECORDING)


def span(
    tracer: trace.Tracer,
    name: str,
    kind: trace.SpanKind,
    attributes: Callable[[], Mapping[str, str | int]],
    parent: str | None = None,
) -> AbstractContextManager[object]:
    """``tracer.start_as_current_span``, or nothing at all when it would do nothing.

    Without a provider a span records nothing, and its only effect is to carry ``parent`` (a
    remote traceparent) as the current context, so that what is sent under it stays in that
    trace. With no parent either, the span is skipped: on a short task's hot path its setup cost
    more than the envelope's JSON. ``attributes`` is called only for a span that is started.
    """
    if parent is None and not recording():
        return contextlib.nullcontext()
    return tracer.start_as_current_span(
        name, context=context_from(parent), kind=kind, attributes=attributes()
    )
