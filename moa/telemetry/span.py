"""What moa's code sees of a trace: the ``Span`` protocol (made by ``moa.telemetry.otel`` where OpenTelemetry is
installed and configured; nothing here imports it), ``opened`` for the request's and its layers' spans, and the one
seam to an HTTP proposer: the span of the upstream call being made, visible only while its proposer is awaited
(``calling``), so that the request it sends carries the call's ``traceparent`` (``upstream_headers``).

No span is ever made current in OpenTelemetry's context: the call path is async generators, where attaching a
context across a ``yield`` leaks it into the consumer. A request's spans are handed down explicitly, as
``RequestContext.span``; ``calling`` sets its context variable and resets it in one frame, around one ``await``.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable, Iterator, Mapping, Sequence
from contextlib import aclosing, contextmanager
from contextvars import ContextVar
from typing import Protocol, TypeVar

AttributeValue = str | bool | int | float | Sequence[str] | Sequence[int] | Sequence[float]
Attributes = Mapping[str, AttributeValue]


class Span(Protocol):
    """A span moa writes to; ``end`` it exactly once."""

    @property
    def recording(self) -> bool:
        """Whether what is set is kept (a span the sampler dropped keeps nothing but its trace context)."""
        ...

    @property
    def capture_content(self) -> bool:
        """Whether message content may be recorded (``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT``)."""
        ...

    def child(self, name: str, attributes: Attributes, *, client: bool = False) -> Span:
        """A span under this one, started now; ``client``: a call to another service (an upstream model)."""
        ...

    def set(self, attributes: Attributes) -> None: ...

    def event(self, name: str, attributes: Attributes | None = None) -> None: ...

    def fail(self, error_type: str, message: str) -> None:
        """Error status with ``message``, and ``error.type``; ``message`` must be masked already."""
        ...

    def end(self) -> None: ...

    def headers(self) -> dict[str, str]:
        """This span's W3C trace context (``traceparent``, ``tracestate``), for an outgoing request."""
        ...


@contextmanager
def opened(parent: Span | None, name: str, attributes: Attributes) -> Iterator[Span | None]:
    """A child span of ``parent`` for the block (none without a parent): a failure sets its error status, a
    cancellation (or a stream closed early) ``moa.outcome: cancelled``. Safe across an async generator's yields:
    nothing is made current."""
    if parent is None:
        yield None
        return
    span = parent.child(name, attributes)
    try:
        yield span
    except Exception as e:
        span.fail(type(e).__name__, str(e))
        raise
    except BaseException:
        span.set({"moa.outcome": "cancelled"})
        raise
    finally:
        span.end()


#: the span of the upstream call whose proposer is being awaited (``calling``)
_CALLING: ContextVar[Span | None] = ContextVar("moa_upstream_call_span", default=None)


@contextmanager
def calling(span: Span) -> Iterator[None]:
    """``span`` is the upstream call's for the block: one ``await`` of its proposer, set and reset in one frame."""
    token = _CALLING.set(span)
    try:
        yield
    finally:
        _CALLING.reset(token)


def upstream_headers() -> dict[str, str] | None:
    """The headers that carry the current upstream call's trace context (``None`` when it has no span)."""
    span = _CALLING.get()
    return None if span is None else span.headers()


def upstream_response(model: object, response_id: object, mask: Callable[[str], str]) -> None:
    """What the upstream said it answered with (``gen_ai.response.model``, ``gen_ai.response.id``: strings only,
    ``mask``ed), on the current upstream call's span."""
    span = _CALLING.get()
    if span is None or not span.recording:
        return
    said: dict[str, AttributeValue] = {}
    if isinstance(model, str) and model:
        said["gen_ai.response.model"] = mask(model)[:200]
    if isinstance(response_id, str) and response_id:
        said["gen_ai.response.id"] = mask(response_id)[:200]
    span.set(said)


T = TypeVar("T")


def in_span(
    parent: Span | None,
    name: str,
    attributes: Attributes,
    open_stream: Callable[[Span | None], AsyncGenerator[T, None]],
    end: Callable[[Span], None] | None = None,
) -> AsyncGenerator[T, None]:
    """``open_stream(span)`` inside a child span of ``parent`` that ends with the stream (``end(span)`` first);
    without a parent, ``open_stream(None)`` itself (no layer between it and its consumer). Closing the stream
    closes ``open_stream``'s before it returns."""
    if parent is None:
        return open_stream(None)
    return _in_span(parent, name, attributes, open_stream, end)


async def _in_span(
    parent: Span,
    name: str,
    attributes: Attributes,
    open_stream: Callable[[Span | None], AsyncGenerator[T, None]],
    end: Callable[[Span], None] | None,
) -> AsyncGenerator[T, None]:
    with opened(parent, name, attributes) as span:
        assert span is not None
        try:
            async with aclosing(open_stream(span)) as items:
                async for item in items:
                    yield item
        finally:
            if end is not None:
                end(span)
