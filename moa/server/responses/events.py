"""A streamed response as OpenAI's semantic events, each ``event: <type>`` / ``data: {...}`` with a
``sequence_number`` counting from 0.

In order: ``response.created``, ``response.in_progress``; with ``stream_options.include_progress`` (moa's
extension) a ``moa.progress`` event as each model call starts and ends; then ``response.output_item.added``
(the assistant's message), ``response.content_part.added``, one ``response.output_text.delta`` a token,
``response.output_text.done``, ``response.content_part.done``, ``response.output_item.done`` and the end:
``response.completed`` (or ``response.incomplete`` at the token cap). The response starts, as a chat stream
does, when the first token (or progress event) arrives, so a request refused before that gets its HTTP status
and OpenAI's error body; a failure after it is a ``response.failed`` event whose response carries the error
(also when the drain timeout cuts the stream off). A client that goes away gets nothing more: ``ClientClosed``,
and the ensemble's stream is closed, cancelling its calls.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from aiohttp import web

from moa.progress import ProgressEvent
from moa.server.errors import ClientClosed, ShuttingDown, error_for
from moa.server.responses.objects import ResponseDraft, output_text_part
from moa.server.state import STATE
from moa.server.streaming import CUT_OFF, SSE_HEADERS, StreamResult, send, trace_entry, uncancel
from moa.types import CallRecord, Delta, Usage

log = logging.getLogger(__name__)


class EventFormat:
    """The events of one response, numbered as they are made."""

    def __init__(self, draft: ResponseDraft) -> None:
        self.draft = draft
        self.sequence = 0
        self._where = {"item_id": draft.message_id, "output_index": 0, "content_index": 0}

    def event(self, kind: str, **fields: Any) -> bytes:
        data = json.dumps({"type": kind, "sequence_number": self.sequence, **fields})
        self.sequence += 1
        return f"event: {kind}\ndata: {data}\n\n".encode()

    def text_delta(self, text: str) -> bytes:
        return self.event("response.output_text.delta", **self._where, delta=text, logprobs=[])

    def opening(self) -> bytes:
        snapshot = self.draft.snapshot()
        return self.event("response.created", response=snapshot) + self.event("response.in_progress", response=snapshot)

    def item_added(self) -> bytes:
        d = self.draft
        added = self.event("response.output_item.added", output_index=0, item=d.message("in_progress", []))
        part = self.event(
            "response.content_part.added",
            item_id=d.message_id,
            output_index=0,
            content_index=0,
            part=output_text_part(""),
        )
        return added + part

    def closing(self, response: dict[str, Any], text: str) -> bytes:
        where = self._where
        item = response["output"][0]
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return (
            self.event("response.output_text.done", **where, text=text, logprobs=[])
            + self.event("response.content_part.done", **where, part=output_text_part(text))
            + self.event("response.output_item.done", output_index=0, item=item)
            + self.event(kind, response=response)
        )

    def failed(self, response: dict[str, Any]) -> bytes:
        return self.event("response.failed", response=response)


async def write_events(
    request: web.Request,
    deltas: AsyncIterator[tuple[int, Delta | ProgressEvent]],
    fmt: EventFormat,
    *,
    want_trace: bool,
    result: StreamResult,
    on_finish: Callable[[dict[str, Any]], Awaitable[None]],
    calls_so_far: Callable[[], list[CallRecord]],
) -> web.StreamResponse:
    """Relay ``deltas`` as events; ``on_finish`` gets the finished response before its last event is sent (the
    store writes it there), ``calls_so_far`` gives a failed response its usage. Raises (for an ordinary error
    response) only if nothing was sent yet."""
    started = time.monotonic()
    response: web.StreamResponse | None = None
    pending = b""
    item_open = False
    pieces: list[str] = []
    last: Delta | None = None
    try:
        async for _, delta in deltas:
            if response is None:
                response = await _start(request)
                pending = fmt.opening()
            if isinstance(delta, ProgressEvent):
                await send(request, response, pending + fmt.event("moa.progress", progress=delta.to_dict()))
                pending = b""
                continue
            if result.first_token_s is None:
                result.first_token_s = time.monotonic() - started
            if not item_open:
                pending += fmt.item_added()
                item_open = True
            if delta.content:
                pieces.append(delta.content)
                await send(request, response, pending + fmt.text_delta(delta.content))
                pending = b""
            if delta.finish_reason is not None:
                last = delta
                result.calls.extend(delta.trace or [])
        assert response is not None and last is not None, "an ensemble's stream always ends with a finish delta"
        result.usage = Usage.total(result.calls)
        trace = [trace_entry(0, last.trace or [], last.defense or [])] if want_trace else None
        text = "".join(pieces)
        finished = fmt.draft.finish(text, last.finish_reason, result.usage, trace)
        await on_finish(finished)
    except ClientClosed:
        raise
    except asyncio.CancelledError:
        if response is None or not request.app[STATE].cut_off:
            raise  # the client left (aiohttp cancels its handler), or the stream had not begun
        uncancel()
        return await _fail(request, response, fmt, pending, ShuttingDown(CUT_OFF), result, calls_so_far())
    except Exception as e:
        if response is None:
            raise
        return await _fail(request, response, fmt, pending, e, result, calls_so_far())
    await send(request, response, pending + fmt.closing(finished, text))
    return response


async def _fail(
    request: web.Request,
    response: web.StreamResponse,
    fmt: EventFormat,
    pending: bytes,
    exc: BaseException,
    result: StreamResult,
    calls: list[CallRecord],
) -> web.StreamResponse:
    status, body = error_for(exc)
    result.error_status = status
    if status == 500:
        log.error("the stream failed after the response began", exc_info=exc)
    else:
        log.warning("the stream failed after the response began: %s (%s)", body["error"]["message"], status)
    await send(request, response, pending + fmt.failed(fmt.draft.fail(body["error"], calls)))
    return response


async def _start(request: web.Request) -> web.StreamResponse:
    transport = request.transport
    if transport is None or transport.is_closing():
        raise ClientClosed("the client closed the connection")
    response = web.StreamResponse(headers=SSE_HEADERS)
    try:
        await response.prepare(request)
    except ConnectionError:
        raise ClientClosed("the client closed the connection") from None
    return response
