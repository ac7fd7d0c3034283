"""A call's CLIENT span (``traced``): ``chat <model>`` or ``embeddings <model>`` under the request's current span
(``ctx.span``), with the GenAI attributes of its request, what its trace record says when it ends, an error status
naming the error's class, and the text sent and received only when content capture is on. ``moa.backend`` adds
this layer only to the calls of a traced request."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Sequence
from contextlib import aclosing

from moa.calls.call import Call, CallState, Send, T
from moa.errors import BackendError
from moa.telemetry import Attributes
from moa.telemetry.genai import input_messages, output_messages, record_attributes
from moa.types import Delta, GenerateResult, Message


def site_attributes(call: Call) -> dict[str, str | int]:
    """Where the call sits in its request: ``moa.layer``, ``moa.role``, ``moa.agent`` (and ``moa.step``)."""
    site = call.site
    attributes: dict[str, str | int] = {"moa.layer": site.layer, "moa.role": site.role, "moa.agent": site.agent}
    if site.step is not None:
        attributes["moa.step"] = site.step
    return attributes


def traced(
    call: Call, operation: str, attributes: Attributes, inner: Send[T], messages: Sequence[Message] = ()
) -> Send[T]:
    """``inner`` inside its CLIENT span (``state.span``, where the retries and the hedge add their events); the
    span ends after the call's record is made, with its outcome."""

    async def send(state: CallState) -> AsyncGenerator[T, None]:
        parent = call.ctx.span
        if parent is None:  # not traced after all: the path is the same without a span
            async with aclosing(inner(state)) as items:
                async for item in items:
                    yield item
            return
        span = parent.child(f"{operation} {call.model}", {**attributes, **site_attributes(call)}, client=True)
        state.span = span
        capture = span.capture_content and span.recording
        if capture and messages:
            span.set({"gen_ai.input.messages": input_messages(messages)})
        finish: list[str] = []
        texts: list[str] = []  # a whole answer's generations
        pieces: list[str] = []  # a stream's
        error_type: str | None = None
        try:
            async with aclosing(inner(state)) as items:
                async for item in items:
                    if isinstance(item, GenerateResult):
                        finish[:] = [g.finish_reason or "stop" for g in item.generations]
                        texts[:] = [g.text for g in item.generations] if capture else []
                    elif isinstance(item, Delta):
                        if item.finish_reason is not None:
                            finish[:] = [item.finish_reason]
                        if capture and item.content:
                            pieces.append(item.content)
                    yield item
        except Exception as e:  # a cancellation is an outcome, not an error (moa.outcome: cancelled)
            error_type = type(e).__name__
            if isinstance(e, BackendError) and e.status is not None:
                span.set({"http.response.status_code": e.status})
            raise
        finally:
            record = state.record
            if record is not None:
                span.set(record_attributes(record))
            if finish:
                span.set({"gen_ai.response.finish_reasons": finish})
            if capture and (texts or pieces or finish):
                span.set({"gen_ai.output.messages": output_messages(texts or ["".join(pieces)], finish)})
            if error_type is not None:
                span.fail(error_type, record.error if record is not None and record.error else error_type)
            span.end()

    return send
