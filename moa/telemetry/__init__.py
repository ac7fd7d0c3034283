"""OpenTelemetry traces of a request: a span for the request (``invoke_workflow <ensemble>``), one for each layer
and the aggregation, and a CLIENT span for each upstream call (``chat <model>``, ``embeddings <model>``) with the
GenAI semantic conventions' attributes and moa's own (``moa.layer``, ``moa.agent``, ``moa.outcome``, ...).

Tracing is on when OpenTelemetry is installed (``moa[otel]``) and a tracer provider is there to write to: one
handed to ``configure``, an application's global one, or one made from the standard environment
(``OTEL_EXPORTER_OTLP_ENDPOINT``, ``OTEL_SERVICE_NAME``, ``OTEL_TRACES_SAMPLER``; ``moa.telemetry.otel``). Otherwise
no span is made anywhere: a request's ``RequestContext.span`` is ``None`` and the call path is built without its
span layer. This module imports no OpenTelemetry package until a request asks for its parent span.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from moa.telemetry.span import (
    Attributes,
    AttributeValue,
    Span,
    calling,
    in_span,
    opened,
    upstream_headers,
    upstream_response,
)

if TYPE_CHECKING:
    from opentelemetry.trace import TracerProvider

#: whether the OpenTelemetry API imports (``None``: not tried yet)
_installed: bool | None = None


def _otel() -> bool:
    global _installed
    if _installed is None:
        try:
            import moa.telemetry.otel  # noqa: F401
        except ImportError:
            _installed = False
        else:
            _installed = True
    return _installed


def request_parent(trace_context: Mapping[str, str] | None = None) -> Span | None:
    """The parent of a request's span, ``None`` when tracing is off: the W3C trace context of an incoming
    request's headers (``traceparent``, ``tracestate``), else the caller's current OpenTelemetry context."""
    if not _otel():
        return None
    from moa.telemetry.otel import Tracing

    return Tracing.parent(trace_context)


def configure(tracer_provider: TracerProvider | None = None, *, capture_content: bool | None = None) -> None:
    """Write moa's spans to ``tracer_provider`` (``None``: back to the global or the environment's);
    ``capture_content`` overrides ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT`` (``None``: read it)."""
    if not _otel():
        raise ImportError("moa.telemetry.configure needs OpenTelemetry: pip install 'moa[otel]'")
    from moa.telemetry.otel import Tracing

    Tracing.configure(tracer_provider, capture_content)


__all__ = [
    "AttributeValue",
    "Attributes",
    "Span",
    "calling",
    "configure",
    "in_span",
    "opened",
    "request_parent",
    "upstream_headers",
    "upstream_response",
]
