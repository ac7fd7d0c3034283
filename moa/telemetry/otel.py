"""moa's spans on OpenTelemetry (the ``moa[otel]`` extra); imported only when tracing is on.

``Tracing.current()`` is the tracer provider moa writes to: one handed to ``moa.telemetry.configure``, else the
global one when an application installed it, else one moa installs from the standard environment when it asks for
an exporter (``OTEL_EXPORTER_OTLP_ENDPOINT`` or ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``, or ``OTEL_TRACES_EXPORTER``
``otlp`` / ``console``): OTLP over HTTP, the service ``OTEL_SERVICE_NAME`` (default ``moa``), the sampler
``OTEL_TRACES_SAMPLER``. Without any of these it is ``None`` and moa makes no span at all.

Incoming and outgoing trace context is W3C Trace Context only (``traceparent``, ``tracestate``): a client's baggage
is not forwarded to upstream providers.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import ProxyTracerProvider, SpanKind, Status, StatusCode, Tracer, TracerProvider
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from moa.telemetry.span import Attributes, AttributeValue

log = logging.getLogger("moa.telemetry")

SCOPE = "moa"
_PROPAGATOR = TraceContextTextMapPropagator()
CAPTURE_CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"


class OtelSpan:
    """A ``moa.telemetry.span.Span`` over an OpenTelemetry span; the parent of a request's span has none. What is
    ``set`` while the span runs is written once, when it ends (the SDK cleans and locks on every write)."""

    __slots__ = ("_tracer", "_span", "_context", "_capture", "_pending")

    def __init__(self, tracer: Tracer, span: trace.Span | None, context: Context, capture: bool) -> None:
        self._tracer = tracer
        self._span = span
        self._context = context
        self._capture = capture
        self._pending: dict[str, AttributeValue] = {}

    @property
    def recording(self) -> bool:
        return self._span is not None and self._span.is_recording()

    @property
    def capture_content(self) -> bool:
        return self._capture

    def child(self, name: str, attributes: Attributes, *, client: bool = False) -> OtelSpan:
        kind = SpanKind.CLIENT if client else SpanKind.INTERNAL
        span = self._tracer.start_span(name, context=self._context, kind=kind, attributes=attributes)
        return OtelSpan(self._tracer, span, trace.set_span_in_context(span, self._context), self._capture)

    def set(self, attributes: Attributes) -> None:
        if self._span is not None:
            self._pending.update(attributes)

    def event(self, name: str, attributes: Attributes | None = None) -> None:
        if self._span is not None:
            self._span.add_event(name, attributes)

    def fail(self, error_type: str, message: str) -> None:
        if self._span is not None:
            self._pending["error.type"] = error_type
            self._span.set_status(Status(StatusCode.ERROR, message))

    def end(self) -> None:
        if self._span is not None:
            if self._pending:
                self._span.set_attributes(self._pending)
            self._span.end()

    def headers(self) -> dict[str, str]:
        carrier: dict[str, str] = {}
        _PROPAGATOR.inject(carrier, context=self._context)
        return carrier


def _truthy(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() == "true"


def _exporter_asked() -> str | None:
    """The exporter the environment asks for (``otlp``, ``console``), ``None`` when it asks for none."""
    if _truthy("OTEL_SDK_DISABLED"):
        return None
    named = os.environ.get("OTEL_TRACES_EXPORTER", "").strip().lower()
    if named in ("otlp", "console"):
        return named
    if named == "none":
        return None
    if named:
        log.warning("OTEL_TRACES_EXPORTER=%s: moa exports traces with otlp or console only; no traces", named)
        return None
    if os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT"):
        return "otlp"
    return None


def provider_from_env() -> TracerProvider | None:
    """A tracer provider made as the environment asks (see the module's docstring), installed as the global one;
    ``None`` when it asks for no exporter or the SDK is not installed."""
    exporter = _exporter_asked()
    if exporter is None:
        return None
    try:
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider as SdkTracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SpanExporter
    except ImportError:
        log.warning("the environment asks for traces but opentelemetry-sdk is not installed: pip install 'moa[otel]'")
        return None
    protocol = os.environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL") or os.environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
    if protocol and protocol != "http/protobuf":
        log.warning("OTEL_EXPORTER_OTLP_PROTOCOL=%s: moa exports OTLP over HTTP (http/protobuf)", protocol)
    named = os.environ.get("OTEL_RESOURCE_ATTRIBUTES", "")
    default = {} if os.environ.get("OTEL_SERVICE_NAME") or "service.name=" in named else {"service.name": "moa"}
    provider = SdkTracerProvider(resource=Resource.create(default))  # the sampler: OTEL_TRACES_SAMPLER
    span_exporter: SpanExporter
    if exporter == "console":
        span_exporter = ConsoleSpanExporter()
    else:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError:
            log.warning("OTLP needs opentelemetry-exporter-otlp-proto-http: pip install 'moa[otel]'; no traces")
            return None
        span_exporter = OTLPSpanExporter()  # its endpoint, headers, timeout: OTEL_EXPORTER_OTLP_*
    provider.add_span_processor(BatchSpanProcessor(span_exporter))  # its batching: OTEL_BSP_*
    trace.set_tracer_provider(provider)
    return provider


class Tracing:
    """The tracer moa writes to, and how each request's spans are parented."""

    _configured: TracerProvider | None = None  # ``moa.telemetry.configure``'s
    _capture: bool | None = None
    _from_env: bool = False  # whether the environment was read (once)
    _cache: tuple[TracerProvider, Tracer] | None = None

    @classmethod
    def provider(cls) -> TracerProvider | None:
        if cls._configured is not None:
            return cls._configured
        provider = trace.get_tracer_provider()
        if isinstance(provider, ProxyTracerProvider) and not cls._from_env:
            cls._from_env = True
            provider = provider_from_env() or provider
        if isinstance(provider, (ProxyTracerProvider, trace.NoOpTracerProvider)):
            return None
        return provider

    @classmethod
    def tracer(cls) -> Tracer | None:
        provider = cls.provider()
        if provider is None:
            return None
        if cls._cache is None or cls._cache[0] is not provider:
            cls._cache = (provider, provider.get_tracer(SCOPE))
        return cls._cache[1]

    @classmethod
    def parent(cls, trace_context: Mapping[str, str] | None = None) -> OtelSpan | None:
        """The parent of a request's span: the W3C trace context of an incoming request's headers, else the
        caller's current context; ``None`` when tracing is off."""
        tracer = cls.tracer()
        if tracer is None:
            return None
        if trace_context is None:
            parent_context = otel_context.get_current()
        else:
            parent_context = _PROPAGATOR.extract(trace_context)
        capture = _truthy(CAPTURE_CONTENT_ENV) if cls._capture is None else cls._capture
        return OtelSpan(tracer, None, parent_context, capture)

    @classmethod
    def configure(cls, provider: TracerProvider | None, capture_content: bool | None) -> None:
        cls._configured, cls._capture, cls._cache = provider, capture_content, None


__all__ = ["AttributeValue", "OtelSpan", "Tracing", "provider_from_env"]
