"""OpenTelemetry tracing, off unless configured: one trace per job, from the POST that made it
through every stage worker that ran it.

`CASCADE_TRACING` turns it on: `console` (spans printed to stderr) or `otlp` (sent to the
collector the standard `OTEL_EXPORTER_OTLP_*` variables name; needs the
`opentelemetry-exporter-otlp-proto-http` package). The API's submission span is the job's root;
its W3C trace context (`traceparent`) is stored in the job's record, and each stage run on any
worker is a child span of it, carrying the job id, the stage and the attempt. Without the
`opentelemetry-sdk` package (the `tracing` extra), or with tracing off, every call here does
nothing.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from typing import Any

log = logging.getLogger(__name__)
MODES = ("", "console", "otlp")
_provider: Any = None  # the TracerProvider spans go to; None: tracing off
_configured = False


def install(provider: Any) -> None:
    """Send spans to `provider` (an SDK TracerProvider; None turns tracing off)."""
    global _provider, _configured
    _provider, _configured = provider, True


def _configure() -> Any:
    """The provider `CASCADE_TRACING` asks for, made once per process."""
    global _configured
    if _configured:
        return _provider
    _configured = True
    mode = os.environ.get("CASCADE_TRACING", "").strip().lower()
    if mode not in MODES:
        raise ValueError(f"CASCADE_TRACING must be one of console, otlp or empty, not {mode!r}")
    if not mode:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import (
            BatchSpanProcessor,
            ConsoleSpanExporter,
            SimpleSpanProcessor,
        )
    except ImportError:
        log.warning("CASCADE_TRACING=%s but opentelemetry-sdk is not installed: no traces", mode)
        return None
    service = os.environ.get("OTEL_SERVICE_NAME", "cascade")
    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    if mode == "console":
        provider.add_span_processor(SimpleSpanProcessor(ConsoleSpanExporter()))
    else:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    install(provider)
    return provider


def enabled() -> bool:
    """Whether spans go anywhere (callers may skip the work of finding a parent)."""
    return _configure() is not None


@contextlib.contextmanager
def span(name: str, parent: str = "", **attributes: object) -> Iterator[str]:
    """A span named `name` (a child of the `parent` traceparent, when given) around the block;
    yields the span's own traceparent ("" with tracing off), for the block to store."""
    provider = _configure()
    if provider is None:
        yield ""
        return
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

    propagator = TraceContextTextMapPropagator()
    context = propagator.extract({"traceparent": parent}) if parent else None
    tracer = provider.get_tracer("cascade")
    clean = {key: value for key, value in attributes.items() if value is not None}
    with tracer.start_as_current_span(name, context=context, attributes=clean) as current:
        carrier: dict[str, str] = {}
        from opentelemetry import trace

        propagator.inject(carrier, context=trace.set_span_in_context(current))
        yield carrier.get("traceparent", "")
