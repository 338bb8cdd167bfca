"""OpenTelemetry set-up and W3C trace-context propagation through NATS headers.

One trace per message: the SMTP session's context is injected into every NATS
message it causes and extracted on the other side, in whichever service.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, MutableMapping, Sequence
from contextlib import AbstractContextManager, nullcontext

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.propagate import extract, inject
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
from opentelemetry.sdk.trace.sampling import Decision, Sampler, SamplingResult
from opentelemetry.util.types import Attributes

from libs.common.contract import subjects

log = logging.getLogger(__name__)

_configured = False


def _exporter_from_env() -> SpanExporter | None:
    """Follow the standard OTEL_* variables; export nothing when none asks for it."""
    names = os.environ.get("OTEL_TRACES_EXPORTER", "")
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    if not wanted and os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        wanted = ["otlp"]
    if not wanted or wanted == ["none"]:
        return None
    if "console" in wanted:
        return ConsoleSpanExporter()
    if "otlp" in wanted:
        return _otlp_exporter()
    log.warning("unsupported OTEL_TRACES_EXPORTER=%s; traces are not exported", names)
    return None


def _otlp_exporter() -> SpanExporter | None:
    """OTLP over the protocol OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL names; the exporter
    reads its endpoint, headers and time-out from the environment itself."""
    protocol = os.environ.get(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL", "")
    )
    if protocol == "grpc":
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import (
                OTLPSpanExporter as GrpcExporter,
            )
        except ImportError:
            log.warning(
                "OTEL_EXPORTER_OTLP_PROTOCOL=grpc needs opentelemetry-exporter-otlp-proto-grpc, "
                "which is not installed; traces are not exported"
            )
            return None
        grpc: SpanExporter = GrpcExporter()
        return grpc
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    exporter: SpanExporter = OTLPSpanExporter()
    return exporter


class _Recording(Sampler):
    """Record spans only while somebody reads them (an exporter or a test's processor).

    With nothing to export, spans still get trace and span ids, so trace context
    and `MessageReceived.trace_parent` flow as usual, but none is recorded: the
    hot path does not pay for attributes, events and processors that nobody reads.
    """

    def __init__(self) -> None:
        self.on = False

    def should_sample(
        self,
        parent_context: otel_context.Context | None,
        trace_id: int,
        name: str,
        kind: trace.SpanKind | None = None,
        attributes: Attributes = None,
        links: Sequence[trace.Link] | None = None,
        trace_state: trace.TraceState | None = None,
    ) -> SamplingResult:
        decision = Decision.RECORD_AND_SAMPLE if self.on else Decision.DROP
        return SamplingResult(decision, attributes if self.on else None, trace_state)

    def get_description(self) -> str:
        return f"mailbus-recording({'on' if self.on else 'off'})"


_sampler = _Recording()


def setup_telemetry(
    service: str, prefix: str = "mailbus", processor: SpanProcessor | None = None
) -> TracerProvider:
    """Install a tracer provider named `<prefix>-<service>` (once per process).

    `processor` lets tests collect spans in memory; otherwise the environment decides.
    """
    global _configured
    current = trace.get_tracer_provider()
    if _configured and isinstance(current, TracerProvider):
        if processor is not None:
            current.add_span_processor(processor)
            _sampler.on = True
        return current
    exporter = _exporter_from_env()
    # The SDK's own variables win: OTEL_SERVICE_NAME (or service.name in
    # OTEL_RESOURCE_ATTRIBUTES) over the configured prefix, OTEL_TRACES_SAMPLER over
    # "record whatever is exported".
    named = os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in os.environ.get(
        "OTEL_RESOURCE_ATTRIBUTES", ""
    )
    resource = Resource.create({} if named else {"service.name": f"{prefix}-{service}"})
    env_sampler = exporter is not None and bool(os.environ.get("OTEL_TRACES_SAMPLER"))
    provider = TracerProvider(resource=resource, sampler=None if env_sampler else _sampler)
    if processor is not None:
        provider.add_span_processor(processor)
        _sampler.on = True
    if exporter is not None:
        provider.add_span_processor(BatchSpanProcessor(exporter))
        _sampler.on = True
    if not _sampler.on:
        # Nobody reads spans: leave the API's no-op tracers in place, so a span costs
        # next to nothing. The provider goes in once something records (OpenTelemetry
        # lets a process set it only once).
        return provider
    trace.set_tracer_provider(provider)
    _configured = True
    return provider


def tracer(name: str) -> trace.Tracer:
    return trace.get_tracer(name)


# Looked up once: a proxy that follows the provider setup_telemetry installs later.
_bus_tracer = trace.get_tracer("mailbus.bus")
_NO_CONTEXT = otel_context.Context()


def recording() -> bool:
    """Whether this process records spans (an exporter or a test's processor)."""
    return _sampler.on


def inject_headers(headers: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """The current trace context as NATS headers (traceparent, tracestate).

    Nothing when this process records nothing: formatting and parsing trace
    context on every message is paid for only where somebody reads the trace.
    """
    carrier: dict[str, str] = dict(headers or {})
    if _sampler.on:
        inject(carrier)
    return carrier


def context_from_headers(headers: Mapping[str, str] | None) -> otel_context.Context:
    if not _sampler.on:
        return _NO_CONTEXT
    return extract(dict(headers or {}))


def context_from_traceparent(traceparent: str | None) -> otel_context.Context:
    if not _sampler.on:
        return _NO_CONTEXT
    return extract({"traceparent": traceparent} if traceparent else {})


def current_traceparent() -> str | None:
    return inject_headers().get("traceparent")


def messaging_attributes(
    subject: str, operation: str, message_id: str | None = None
) -> dict[str, str]:
    """OpenTelemetry messaging semantic conventions for a NATS subject."""
    attrs = {
        "messaging.system": "nats",
        "messaging.destination.name": subject,
        "messaging.operation.type": operation,  # send | receive | process
    }
    if message_id:
        attrs["messaging.message.id"] = message_id
    return attrs


def producer_span(
    subject: str, message_id: str | None = None
) -> AbstractContextManager[trace.Span]:
    """A PRODUCER span named the semconv way, `publish <destination template>`.

    The template replaces the queue id (or destination) in the subject
    (`publish mailbus.evt.{queue_id}.MessageReceived`), so names stay bounded; the
    full subject and the queue id are attributes.
    """
    if not _sampler.on:
        return nullcontext(trace.INVALID_SPAN)
    template, queue_id = subjects.subject_template(subject)
    attributes = messaging_attributes(subject, "send", message_id)
    attributes["messaging.destination.template"] = template
    if queue_id:
        attributes["mailbus.queue_id"] = queue_id
    return _bus_tracer.start_as_current_span(
        f"publish {template}", kind=trace.SpanKind.PRODUCER, attributes=attributes
    )
