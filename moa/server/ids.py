"""Request ids: one per request, sent back as ``x-request-id`` and put on every log line of that request.

An incoming ``x-request-id`` is kept when it is a sane token (``SANE_ID``: letters, digits and ``._:-``, at
most 128 characters), so a proxy's id follows the request; anything else is replaced by ``req_<32 hex>``.
The id of the request being served lives in a context variable: the tasks a request starts inherit it.
"""

from __future__ import annotations

import logging
import re
import uuid
from contextvars import ContextVar

from aiohttp import web

HEADER = "x-request-id"
SANE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._:-]{0,127}")
#: the id of the request this code runs for; ``-`` outside any request
CURRENT: ContextVar[str] = ContextVar("moa_request_id", default="-")
_KEY = web.RequestKey("moa_request_id", str)


def new_id() -> str:
    return f"req_{uuid.uuid4().hex}"


def request_id(request: web.BaseRequest) -> str:
    """This request's id: the client's when sane, else a new one; the same on every call."""
    known = request.get(_KEY)
    if known is None:
        given = request.headers.get(HEADER, "")
        known = given if SANE_ID.fullmatch(given) else new_id()
        request[_KEY] = known
    return known


def bind(request: web.BaseRequest) -> str:
    """Make ``request``'s id the current one (for the log lines of the task serving it)."""
    rid = request_id(request)
    CURRENT.set(rid)
    return rid


async def add_header(request: web.Request, response: web.StreamResponse) -> None:
    """``on_response_prepare``: every response of a routed request carries its id."""
    response.headers[HEADER] = request_id(request)


class RequestIdFilter(logging.Filter):
    """Sets ``record.request_id`` to the current request's id."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = CURRENT.get()
        return True


#: ``moa serve``'s log lines (installed with ``RequestIdFilter`` by moa.logs.configure_logging)
LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"
