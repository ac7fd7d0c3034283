"""A streamed response as OpenAI's semantic events, each ``event: <type>`` / ``data: {...}`` with a
``sequence_number`` counting from 0.

In order: ``response.created``, ``response.in_progress``; with ``stream_options.include_progress`` (moa's
extension) a ``moa.progress`` event as each model call starts and ends; then ``response.output_item.added``
(the assistant's message), ``response.content_part.added``, one ``response.output_text.delta`` a token,
``response.output_text.done``, ``response.content_part.done``, ``response.output_item.done``; for each tool call
of the answer a ``function_call`` item: ``response.output_item.added``, ``response.function_call_arguments.delta``
pieces, ``.done``, ``response.output_item.done``; and the end:
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
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import Any

from aiohttp import web

from moa.progress import ProgressEvent
from moa.server.errors import ClientClosed, ShuttingDown, error_for
from moa.server.responses.items import Item
from moa.server.responses.objects import ResponseDraft, output_text_part
from moa.server.responses.tools import call_item
from moa.server.state import STATE
from moa.server.streaming import CUT_OFF, StreamResult, send, start_stream, trace_entry, uncancel
from moa.tools import ToolCall, ToolCallDelta, new_call_id
from moa.types import CallRecord, Delta, Usage

log = logging.getLogger(__name__)


class EventFormat:
    """The events of one response, numbered as they are made, and the output items they open and close in order:
    the message (``output_text`` deltas) and a ``function_call`` item a tool call (``function_call_arguments``
    deltas); an item is done when the next one opens, or at the end."""

    def __init__(self, draft: ResponseDraft) -> None:
        self.draft = draft
        self.sequence = 0
        self.items: list[Item] = []  # the output so far, in order
        self._open: int | None = None  # the index of the item still open
        self._text: list[str] = []
        self._text_at: int | None = None
        self._calls: dict[int, int] = {}  # the answer's call index -> its item's output index

    def event(self, kind: str, **fields: Any) -> bytes:
        data = json.dumps({"type": kind, "sequence_number": self.sequence, **fields})
        self.sequence += 1
        return f"event: {kind}\ndata: {data}\n\n".encode()

    def opening(self) -> bytes:
        snapshot = self.draft.snapshot()
        return self.event("response.created", response=snapshot) + self.event("response.in_progress", response=snapshot)

    def text(self, piece: str) -> bytes:
        out = b""
        if self._text_at is None:
            out += self._close()
            self._text_at = self._add(self.draft.message("in_progress", []))
            out += self.event("response.output_item.added", output_index=self._text_at, item=self.items[-1])
            out += self.event("response.content_part.added", **self._where(), part=output_text_part(""))
        self._text.append(piece)
        return out + self.event("response.output_text.delta", **self._where(), delta=piece, logprobs=[])

    def call(self, piece: ToolCallDelta) -> bytes:
        out = b""
        at = self._calls.get(piece.index)
        if at is None:
            out += self._close()
            call_id = piece.id or new_call_id()
            at = self._add(call_item(self.draft.call_item_id(call_id), call_id, piece.name or "", "", "in_progress"))
            self._calls[piece.index] = at
            out += self.event("response.output_item.added", output_index=at, item=dict(self.items[at]))
        item = self.items[at]
        if piece.name and piece.id is None:
            item["name"] += piece.name
        if piece.arguments:
            item["arguments"] += piece.arguments
            delta = {"item_id": item["id"], "output_index": at, "delta": piece.arguments}
            out += self.event("response.function_call_arguments.delta", **delta)
        return out

    def _add(self, item: Item) -> int:
        self.items.append(item)
        self._open = len(self.items) - 1
        return self._open

    def _where(self) -> dict[str, Any]:
        return {"item_id": self.draft.message_id, "output_index": self._text_at, "content_index": 0}

    def _close(self, status: str = "completed") -> bytes:
        at, self._open = self._open, None
        if at is None:
            return b""
        item = self.items[at]
        out = b""
        if item["type"] == "message":
            text = "".join(self._text)
            out += self.event("response.output_text.done", **self._where(), text=text, logprobs=[])
            out += self.event("response.content_part.done", **self._where(), part=output_text_part(text))
            item = self.items[at] = self.draft.message(status, [output_text_part(text)])
        else:
            done = {"item_id": item["id"], "output_index": at, "name": item["name"], "arguments": item["arguments"]}
            out += self.event("response.function_call_arguments.done", **done)
            item["status"] = "completed"
        return out + self.event("response.output_item.done", output_index=at, item=item)

    def closing(self, response: dict[str, Any]) -> bytes:
        """The last events: the open item done, then the response; the response's output is the stream's."""
        out = b""
        if not self.items:  # an empty answer is an empty message
            out += self.text("")
        out += self._close(response["status"])
        response["output"] = self.items
        kind = "response.incomplete" if response["status"] == "incomplete" else "response.completed"
        return out + self.event(kind, response=response)

    def failed(self, response: dict[str, Any]) -> bytes:
        return self.event("response.failed", response=response)

    def answer(self) -> tuple[str, tuple[ToolCall, ...]]:
        """The text and the calls streamed so far."""
        calls = tuple(
            ToolCall(i["call_id"], i["name"], i["arguments"] or "{}")
            for i in self.items
            if i["type"] == "function_call"
        )
        return "".join(self._text), calls


async def write_events(
    request: web.Request,
    deltas: AsyncIterator[tuple[int, Delta | ProgressEvent]],
    fmt: EventFormat,
    *,
    want_trace: bool,
    result: StreamResult,
    on_finish: Callable[[dict[str, Any]], Awaitable[None]],
    calls_so_far: Callable[[], list[CallRecord]],
    headers: Mapping[str, str] | None = None,
) -> web.StreamResponse:
    """Relay ``deltas`` as events (``headers`` beside the stream's own); ``on_finish`` gets the finished response before its last event is sent (the
    store writes it there), ``calls_so_far`` gives a failed response its usage. Raises (for an ordinary error
    response) only if nothing was sent yet."""
    started = time.monotonic()
    response: web.StreamResponse | None = None
    pending = b""
    last: Delta | None = None
    try:
        async for _, delta in deltas:
            if response is None:
                response = await start_stream(request, headers)
                pending = fmt.opening()
            if isinstance(delta, ProgressEvent):
                await send(request, response, pending + fmt.event("moa.progress", progress=delta.to_dict()))
                pending = b""
                continue
            if result.first_token_s is None:
                result.first_token_s = time.monotonic() - started
            if delta.content:
                pending += fmt.text(delta.content)
            for piece in delta.tool_calls:
                pending += fmt.call(piece)
            if pending and (delta.content or delta.tool_calls):
                await send(request, response, pending)
                pending = b""
            if delta.finish_reason is not None:
                last = delta
                result.calls.extend(delta.trace or [])
        assert response is not None and last is not None, "an ensemble's stream always ends with a finish delta"
        result.usage = Usage.total(result.calls)
        trace = [trace_entry(0, last.trace or [], last.defense or [])] if want_trace else None
        text, calls = fmt.answer()
        finished = fmt.draft.finish(text, calls, last.finish_reason, result.usage, trace)
        closing = fmt.closing(finished)
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
    await send(request, response, pending + closing)
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
