"""A request's way in and its bookkeeping, shared by every endpoint that runs an ensemble (chat completions, the
Responses API): room in the queue, the JSON body read within its time, admission, and what is counted at the end
whatever happens (the metrics, the access line, 499 for a client that left, 503 at the drain timeout).
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from moa.context import RequestContext
from moa.errors import ConfigError
from moa.server.access import ACCESS, Access
from moa.server.errors import (
    BodyReadTimeout,
    BodyTooLarge,
    MalformedRequest,
    QueueFull,
    ShuttingDown,
    UnsupportedMediaType,
    error_for,
)
from moa.server.protocol import describe
from moa.server.state import STATE, ServerSettings, ServerState
from moa.server.streaming import uncancel
from moa.types import Usage

log = logging.getLogger(__name__)

#: status recorded for a request whose client went away before the answer (nginx's convention)
CLIENT_CLOSED = 499
#: the metrics label of a request whose ensemble is not known (client-chosen names would be unbounded)
UNKNOWN = "unknown"
JSON = "application/json"


@dataclass
class Book:
    """What one request's bookkeeping counts: its ensemble's label, its status and its runs (a choice each, with
    the calls it made). The handler sets them as it learns them."""

    label: str = UNKNOWN
    status: int = CLIENT_CLOSED
    runs: list[RequestContext] = field(default_factory=list)


async def bookkept(request: web.Request, handle: Callable[[Book], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    """``handle``'s response, with every model call counted whatever the end: a client that went away is a 499,
    a request cut off by the drain timeout gets a 503, an error its status."""
    state = request.app[STATE]
    started = time.monotonic()
    book = Book()
    task = asyncio.current_task()
    if task is not None:
        state.handlers.add(task)
    try:
        return await handle(book)
    except asyncio.CancelledError:
        if not state.cut_off:
            raise  # the client went away (aiohttp cancels the handler of a closed connection): 499
        uncancel()  # the drain timeout passed: this request still gets its answer, a 503
        book.status = 503
        raise ShuttingDown(
            "the server shut down before the answer was ready (--drain-timeout); retry on another replica"
        ) from None
    except Exception as e:
        book.status = error_for(e)[0]
        raise
    finally:
        if task is not None:
            state.handlers.discard(task)
        if book.status == CLIENT_CLOSED:
            log.info("the client closed the connection before the answer was complete (%d)", CLIENT_CLOSED)
        calls = [r for run in book.runs for r in run.trace]
        state.metrics.record_calls(book.label, calls)
        state.metrics.record_request(book.label, book.status, time.monotonic() - started)
        request[ACCESS] = Access(book.label, book.status, Usage.total(calls))


@asynccontextmanager
async def admitted(state: ServerState) -> AsyncIterator[None]:
    """A place in the queue while the run lasts (``QueueFull`` / ``ShuttingDown`` when there is none)."""
    _admit(state)
    try:
        yield
    finally:
        state.admitted -= 1
        state.metrics.in_flight.set(state.admitted)


def check_room(state: ServerState) -> None:
    if state.draining:
        raise ShuttingDown("the server is shutting down; send the request to another replica")
    if state.admitted >= state.settings.max_queue:
        raise QueueFull(f"the server already holds its limit of {state.settings.max_queue} requests; retry later")


def _admit(state: ServerState) -> None:
    check_room(state)  # again: the body took a while, others may have come in meanwhile
    state.admitted += 1
    state.metrics.in_flight.set(state.admitted)


async def read_json(request: web.Request, settings: ServerSettings) -> Any:
    """The decoded JSON body, read within ``read_timeout_s``; only ``application/json`` bodies are read.

    A JSON content type is required so that a web page cannot start runs with a simple (unpreflighted)
    cross-origin ``text/plain`` or form POST."""
    if request.content_type != JSON:
        sent = request.headers.get("Content-Type")
        got = f"got {sent[:100]!r}" if sent else "none was sent"
        raise UnsupportedMediaType(f"the request body must be sent with Content-Type: {JSON} ({got})")
    _check_coding(request)
    limit = settings.max_body_bytes
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"the request body is larger than {limit} bytes")
    try:
        async with asyncio.timeout(settings.read_timeout_s):
            raw = await request.read()
    except TimeoutError:
        raise BodyReadTimeout(f"the request body did not arrive within {settings.read_timeout_s:g} s") from None
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(f"the request body is larger than {limit} bytes") from None
    except (web.RequestPayloadError, HttpProcessingError) as e:  # bad chunks, undecodable Content-Encoding
        raise MalformedRequest(f"the request body cannot be read: {describe(e)}") from None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ConfigError(f"the request body is not valid JSON ({type(e).__name__})") from None


#: the codings aiohttp decodes (``br`` and ``zstd`` need their packages; without them decoding fails with a 400)
CODINGS = frozenset({"gzip", "deflate", "br", "zstd"})


def _check_coding(request: web.Request) -> None:
    """One coding aiohttp decodes, or none: anything else it would read as identity (``zz``, ``gzip, br``)."""
    sent = request.headers.getall("Content-Encoding", [])
    codings = [c.strip().lower() for value in sent for c in value.split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings or (len(codings) == 1 and codings[0] in CODINGS):
        return
    what = "more than one coding" if len(codings) > 1 else "a coding this server does not decode"
    raise MalformedRequest(
        f"Content-Encoding: {what}; send the body as gzip, deflate, br, zstd or identity", "Content-Encoding"
    )


__all__ = ["CLIENT_CLOSED", "JSON", "UNKNOWN", "Book", "admitted", "bookkept", "check_room", "read_json"]
