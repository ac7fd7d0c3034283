"""Server-sent events for a streamed chat completion, in the ``chat.completion.chunk`` shape.

The response starts when the first token (or the end) of any choice arrives, so a request that fails before
that still gets a proper HTTP status. The first chunk of each choice carries the role; then come its tokens,
one chunk each (with ``logprobs`` when the request asked: the positions each chunk's text begins), and its tool
calls' pieces, a chunk each, in OpenAI's ``delta.tool_calls`` shape; then one chunk
with its ``finish_reason``. A last chunk with no choices carries ``usage`` when
``stream_options.include_usage`` asked and ``moa_trace`` when the request asked. A failure after the response
began is sent as an ``{"error": ...}`` event, and logged (the event may say the details are in the log).
The stream always ends with ``data: [DONE]``, also when the server's drain timeout cuts it off (an error event
``shutting_down`` first). A client that went away gets nothing more: ``ClientClosed`` (status 499) is raised
before any write to a closing connection, and the ensemble's stream is closed, cancelling its calls.

With ``stream_options.include_progress`` (moa's extension) the response starts at once, and each progress event
(``moa.progress.ProgressEvent``) goes out as a chunk of ``object: "moa.progress"`` with ``choices: []`` and the
event under ``moa_progress``; a failure before the first token is then an ``{"error": ...}`` event too.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Any

from aiohttp import web

from moa.logprobs import openai_content
from moa.progress import ProgressEvent
from moa.server.errors import ClientClosed, ShuttingDown, error_for
from moa.server.state import STATE
from moa.types import CallRecord, DefenseRecord, Delta, Usage

log = logging.getLogger(__name__)

DONE = b"data: [DONE]\n\n"
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


class ChunkFormat:
    """Chunks of one response. Token chunks are the hot path: a prebuilt frame around one ``json.dumps``."""

    def __init__(self, model: str, include_usage: bool, top_logprobs: int | None = None) -> None:
        self.top_logprobs = top_logprobs  # the request asked for logprobs: this many alternatives a position
        self.base: dict[str, Any] = {
            "id": f"chatcmpl-{uuid.uuid4().hex}",
            "object": "chat.completion.chunk",
            "created": int(time.time()),
            "model": model,
        }
        if include_usage:
            self.base["usage"] = None  # OpenAI's shape: null on every chunk but the last
        # the frame of a token chunk, split around the two values that vary (quotes make the markers unique)
        frame = self.event_text(self.chunk_dict(-1, {"content": "\x00"}))
        head, rest = frame.split('"index": -1', 1)
        middle, tail = rest.split('"\\u0000"', 1)
        self._frame = (head + '"index": ', middle, tail)

    def chunk_dict(
        self,
        index: int,
        delta: dict[str, Any],
        finish_reason: str | None = None,
        logprobs: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        return {
            **self.base,
            "choices": [{"index": index, "delta": delta, "logprobs": logprobs, "finish_reason": finish_reason}],
        }

    @staticmethod
    def event_text(obj: dict[str, Any]) -> str:
        return f"data: {json.dumps(obj)}\n\n"

    def event(self, obj: dict[str, Any]) -> bytes:
        return self.event_text(obj).encode()

    def chunk(self, index: int, delta: dict[str, Any], finish_reason: str | None = None) -> bytes:
        return self.event(self.chunk_dict(index, delta, finish_reason))

    def token(self, index: int, content: str) -> bytes:
        head, middle, tail = self._frame
        return f"{head}{index}{middle}{json.dumps(content)}{tail}".encode()

    def token_with_logprobs(self, index: int, delta: Delta) -> bytes:
        """A token chunk carrying the positions its text begins (``choices[i].logprobs``, as OpenAI streams them)."""
        logprobs = openai_content(delta.sampled, delta.logprobs, self.top_logprobs or 0)
        return self.event(self.chunk_dict(index, {"content": delta.content}, logprobs=logprobs))

    def progress(self, index: int, event: ProgressEvent) -> bytes:
        """A ``moa.progress`` chunk: no choices (so OpenAI clients pass it by), the event under ``moa_progress``."""
        return self.event(
            {**self.base, "object": "moa.progress", "choices": [], "moa_progress": {"index": index, **event.to_dict()}}
        )

    def proposal(self, entry: dict[str, Any]) -> bytes:
        """A ``moa.proposal`` chunk: no choices (so OpenAI clients pass it by), the panel entry under
        ``moa_proposal``."""
        return self.event({**self.base, "object": "moa.proposal", "choices": [], "moa_proposal": entry})

    def last(self, usage: Usage | None, trace: list[dict[str, Any]] | None) -> bytes:
        extra: dict[str, Any] = {} if usage is None else {"usage": usage.model_dump(exclude_none=True)}
        if trace is not None:
            extra["moa_trace"] = trace
        return self.event({**self.base, "choices": [], **extra})


def trace_entry(index: int, calls: list[CallRecord], defense: list[DefenseRecord]) -> dict[str, Any]:
    """One choice's part of the ``moa_trace`` extension: its model calls and what its defense did."""
    return {"index": index, "calls": [c.model_dump() for c in calls], "defense": [d.model_dump() for d in defense]}


class StreamResult:
    """What a finished (or failed) stream leaves behind, for the metrics."""

    def __init__(self) -> None:
        self.first_token_s: float | None = None
        self.calls: list[CallRecord] = []
        self.usage: Usage | None = None
        #: the status of a failure after the response began (the HTTP status was already 200)
        self.error_status: int | None = None


#: what a stream cut off at the drain timeout says
CUT_OFF = "the server shut down before this stream finished (--drain-timeout); retry on another replica"


async def send(request: web.Request, response: web.StreamResponse, data: bytes) -> None:
    """Write ``data``, or raise ``ClientClosed`` (writing nothing) when the client's connection is closing."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ClientClosed("the client closed the connection")
    try:
        await response.write(data)
    except ConnectionError:  # aiohttp's ClientConnectionResetError, a reset socket
        raise ClientClosed("the client closed the connection") from None


async def write_stream(
    request: web.Request,
    deltas: AsyncIterator[tuple[int, Delta | ProgressEvent]],
    fmt: ChunkFormat,
    *,
    n: int,
    want_usage: bool,
    want_trace: bool,
    result: StreamResult,
    headers: dict[str, str] | None = None,
    panel: Callable[[int, ProgressEvent], dict[str, Any]] | None = None,
) -> web.StreamResponse:
    """Relay ``deltas`` as SSE; a ``proposal`` event becomes a ``moa.proposal`` chunk holding ``panel``'s entry
    for it. Raises (for an ordinary error response) only if nothing was sent yet.

    Chunks that need not go out alone (the roles, a finish) wait in ``pending`` and leave with the next
    token or the end, so a request costs one write a token plus one at the end.
    """
    started = time.monotonic()
    response: web.StreamResponse | None = None
    pending = b""
    finished: dict[int, Delta] = {}  # each choice's last delta: its trace and what its defense did
    try:
        async for index, delta in deltas:
            if isinstance(delta, ProgressEvent):  # asked for: the response starts with the first event
                if response is None:
                    response = await start_stream(request, headers)
                    pending = _roles(fmt, n)
                if delta.kind == "proposal":
                    if panel is not None:
                        await send(request, response, fmt.proposal(panel(index, delta)))
                else:
                    await send(request, response, fmt.progress(index, delta))
                continue
            if result.first_token_s is None:
                result.first_token_s = time.monotonic() - started
            if response is None:
                response = await start_stream(request, headers)
                pending = _roles(fmt, n)
            if delta.sampled and fmt.top_logprobs is not None:
                await send(request, response, pending + fmt.token_with_logprobs(index, delta))
                pending = b""
            elif delta.content:
                await send(request, response, pending + fmt.token(index, delta.content))
                pending = b""
            if delta.tool_calls:  # OpenAI's pieces: delta.tool_calls[i].index/id/type/function.name/arguments
                calls = [piece.to_dict() for piece in delta.tool_calls]
                await send(request, response, pending + fmt.chunk(index, {"tool_calls": calls}))
                pending = b""
            if delta.finish_reason is not None:
                finished[index] = delta
                result.calls.extend(delta.trace or [])
                pending += fmt.chunk(index, {}, delta.finish_reason)
    except ClientClosed:
        raise
    except asyncio.CancelledError:
        if response is None or not request.app[STATE].cut_off:
            raise  # the client left (aiohttp cancels its handler), or the stream had not begun
        uncancel()
        status, body = error_for(ShuttingDown(CUT_OFF))
        result.error_status = status
        log.warning("the stream was cut off at the drain timeout (%s)", status)
        await send(request, response, pending + fmt.event(body) + DONE)
        return response
    except Exception as e:
        if response is None:
            raise
        status, body = error_for(e)
        result.error_status = status
        if status == 500:
            log.error("the stream failed after the response began", exc_info=e)
        else:
            log.warning("the stream failed after the response began: %s (%s)", body["error"]["message"], status)
        await send(request, response, pending + fmt.event(body) + DONE)
        return response
    assert response is not None, "an ensemble's stream always ends with a finish delta"
    result.usage = Usage.total(result.calls)
    if want_usage or want_trace:
        trace = None
        if want_trace:
            trace = [trace_entry(i, d.trace or [], d.defense or []) for i, d in sorted(finished.items())]
        pending += fmt.last(result.usage if want_usage else None, trace)
    await send(request, response, pending + DONE)
    return response


def uncancel() -> None:
    """Take back the cancellation this task was sent (the drain's), so that what follows may await."""
    task = asyncio.current_task()
    if task is not None:
        task.uncancel()


async def start_stream(request: web.Request, headers: Mapping[str, str] | None = None) -> web.StreamResponse:
    """An SSE response begun (its headers and ``headers`` sent); ``ClientClosed`` when the client already left."""
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ClientClosed("the client closed the connection")
    response = web.StreamResponse(headers={**SSE_HEADERS, **(headers or {})})
    try:
        await response.prepare(request)
    except ConnectionError:
        raise ClientClosed("the client closed the connection") from None
    return response


def _roles(fmt: ChunkFormat, n: int) -> bytes:
    """The first chunk of each choice: its role."""
    return b"".join(fmt.chunk(i, {"role": "assistant", "content": ""}) for i in range(n))
