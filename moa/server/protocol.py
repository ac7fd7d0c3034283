"""aiohttp's connection layer with moa's answers: what aiohttp refuses itself gets an OpenAI error body too.

aiohttp answers a message it cannot parse (oversized headers, Content-Length with Transfer-Encoding, a bad
chunk size, an undecodable Content-Encoding, an HTTP/0.9 request line) from ``RequestHandler.handle_error`` in
plain text, and an
``Expect`` it refuses from outside the application's middlewares. ``Runner`` serves the application through
``OpenAIServer``, whose connections (``OpenAIProtocol``) answer both with the body of ``moa.server.errors``
and an ``x-request-id``, log one line without a traceback, and close the connection.
"""

from __future__ import annotations

import asyncio
import logging
import re
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError, LineTooLong

from moa.server import ids
from moa.server.errors import ExpectationFailed, MalformedRequest, error_for
from moa.server.framing import MessageFramer

log = logging.getLogger(__name__)

#: aiohttp's defaults, named here because the messages quote them
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 8190
#: from a quoted excerpt of what aiohttp failed on (``b'...'``, ``'GET /...'``) on: it may hold secrets
_EXCERPT = re.compile(r"(:\s*|\s)b?['\"].*$")
#: the first line of ``str()`` of aiohttp's parse errors
_STATUS_LINE = re.compile(r"\d{3}, message:")


def describe(exc: BaseException | None, message: str | None = None) -> str:
    """What is wrong with a malformed message, without the bytes it quoted (they may be secrets)."""
    if isinstance(exc, LineTooLong):
        return f"a request line or header is longer than {MAX_FIELD_SIZE} bytes"
    if message is None:
        message = exc.message if isinstance(exc, HttpProcessingError) else str(exc or "")
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    lines = [line for line in lines if not _STATUS_LINE.fullmatch(line)]
    first = _EXCERPT.sub("", lines[0]).rstrip(": ") if lines else ""
    return first[:200] or "the HTTP message cannot be parsed"


def refusal(request: web.BaseRequest, exc: BaseException) -> web.Response:
    """The OpenAI error response for ``exc``, with the request's id, closing the connection."""
    status, body = error_for(exc)
    if status == 500:
        log.error("unexpected error while serving a request", exc_info=exc)
    response = web.json_response(body, status=status, headers={ids.HEADER: ids.request_id(request)})
    response.force_close()
    return response


class OpenAIProtocol(web.RequestHandler):
    """One connection; its parse errors are OpenAI error bodies, and nothing it logs carries a traceback. Its
    parser is fed one request at a time (``MessageFramer``): a request before garbage is answered, then the
    garbage gets its 400."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._parser = MessageFramer(self._parser)  # type: ignore[assignment]

    def handle_error(
        self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None, message: str | None = None
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:  # the response began: only closing is left (aiohttp's own rule)
            raise ConnectionError("the response was already sent in part")
        if isinstance(exc, ConnectionError):  # the client went away (ClientClosed): nothing to answer it
            raise ConnectionError("the client closed the connection")
        ids.bind(request)
        if status == 400:
            reason = describe(exc, message)
            log.info("refused a malformed request from %s: %s", request.remote, reason)
            return refusal(request, MalformedRequest(f"malformed HTTP request: {reason}"))
        return refusal(request, exc if exc is not None else RuntimeError(f"aiohttp answered {status}"))

    def log_exception(self, *args: Any, **kw: Any) -> None:
        """aiohttp's connection-level failures (a client that vanished, a body left unreadable): one line."""
        exc = kw.get("exc_info")
        what = f"{type(exc).__name__}: {describe(exc)}" if isinstance(exc, BaseException) else "no details"
        log.info("connection error (%s)", what)


class OpenAIServer(web.Server):
    """``web.Server`` whose connections are ``OpenAIProtocol``s, and whose refusals outside the middlewares
    (an ``Expect`` aiohttp does not know) are OpenAI error bodies."""

    def __init__(self, app_server: web.Server, loop: asyncio.AbstractEventLoop, **protocol_kwargs: Any) -> None:
        super().__init__(
            self._handle,
            request_factory=app_server.request_factory,
            handler_cancellation=app_server.handler_cancellation,
            loop=loop,
            **protocol_kwargs,
        )
        self._app_handler = app_server.request_handler
        self._protocol_loop = loop
        self._protocol_kwargs = protocol_kwargs

    def __call__(self) -> web.RequestHandler:
        return OpenAIProtocol(self, loop=self._protocol_loop, **self._protocol_kwargs)

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        ids.bind(request)
        try:
            return await self._app_handler(request)
        except web.HTTPExpectationFailed:
            return refusal(request, ExpectationFailed("only 'Expect: 100-continue' is supported"))


class Runner(web.AppRunner):
    """``web.AppRunner`` serving through ``OpenAIServer``; ``protocol_kwargs`` go to each connection
    (``keepalive_timeout`` and the like)."""

    def __init__(self, app: web.Application, protocol_kwargs: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(app, **kwargs)
        self._protocol_kwargs = protocol_kwargs

    async def _make_server(self) -> web.Server:
        app_server = await super()._make_server()  # starts the application
        return OpenAIServer(app_server, asyncio.get_running_loop(), **self._protocol_kwargs)
