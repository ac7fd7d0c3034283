"""The access log: one line per request on the ``moa.server.access`` logger, at INFO, after its last byte::

    POST /v1/chat/completions 200 ensemble=default tokens=3425 cost=- 41.20s req_4f0c...

A chat request's handler leaves its ensemble, final status (a stream's error status; 499 when the client went
away) and usage in ``request[ACCESS]``; other requests log ``-`` for them. No header, body or key is logged.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from aiohttp import web

from moa.server import ids
from moa.types import Usage

log = logging.getLogger("moa.server.access")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@dataclass(frozen=True, slots=True)
class Access:
    """What a chat request's handler knows at its end."""

    ensemble: str
    status: int
    usage: Usage


ACCESS = web.RequestKey("moa_access", Access)


def line(request: web.Request, status: int, seconds: float) -> str:
    access = request.get(ACCESS)
    ensemble, tokens, cost = "-", "-", "-"
    if access is not None:
        ensemble, status, tokens = access.ensemble, access.status, str(access.usage.total_tokens)
        if access.usage.cost is not None:
            cost = f"{access.usage.cost:.6f}"
    return (
        f"{request.method} {request.path} {status} ensemble={ensemble} tokens={tokens} cost={cost} "
        f"{seconds:.2f}s {ids.request_id(request)}"
    )


@web.middleware
async def access_log(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Outermost: logs each request once it is answered (or given up on), with the status the client got."""
    started = time.monotonic()
    status = 499  # the client went away before an answer (nginx's convention)
    try:
        response = await handler(request)
        status = response.status
        return response
    finally:
        log.info("%s", line(request, status, time.monotonic() - started))
