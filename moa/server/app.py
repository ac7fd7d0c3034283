"""The aiohttp application: shared state, routes, the two middlewares (errors outermost, then API keys) and
the ``x-request-id`` of every response."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import web

from moa.ensemble import Ensemble
from moa.errors import ConfigError
from moa.server import ids, limits_status, routes, ui
from moa.server.access import access_log
from moa.server.errors import (
    CLOSES_CONNECTION,
    BodyReadTimeout,
    BodyTooLarge,
    ClientClosed,
    MethodNotAllowed,
    QueueFull,
    RouteNotFound,
    ShuttingDown,
    Unauthorized,
    error_for,
)
from moa.server.responses import routes as responses
from moa.server.state import STATE, ServerSettings, ServerState

log = logging.getLogger(__name__)

#: paths that need no API key (load balancers probe them)
OPEN_PATHS = frozenset({"/health", "/ready"})

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class ClosingResponse(web.Response):
    """A response after which the connection closes at once: no lingering read of a body that stopped coming."""

    def __init__(self, protocol: web.RequestHandler, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._closes = protocol

    async def write_eof(self, data: bytes = b"") -> None:
        await super().write_eof(data)
        self._closes.force_close()


def error_response(exc: BaseException, request: web.Request | None = None) -> web.Response:
    status, body = error_for(exc)
    if status == 500:
        log.error("unexpected error while serving a request", exc_info=exc)
    headers = {"Retry-After": "1"} if isinstance(exc, (QueueFull, ShuttingDown)) else None
    if isinstance(exc, BodyReadTimeout) and request is not None:
        text = json.dumps(body)
        return ClosingResponse(request.protocol, text=text, status=status, content_type="application/json")
    response = web.json_response(body, status=status, headers=headers)
    if isinstance(exc, CLOSES_CONNECTION):
        response.force_close()
    return response


def _from_aiohttp(e: web.HTTPException, request: web.Request) -> Exception:
    """aiohttp's own refusals (no route, wrong method, body over the limit) in moa's terms."""
    if e.status == 404:
        return RouteNotFound(
            f"no route {request.path}; see /v1/chat/completions, /v1/responses, /v1/models, /health, /ready, /metrics"
        )
    if e.status == 405:
        return MethodNotAllowed(f"{request.method} is not allowed on {request.path}")
    if e.status == 413:
        return BodyTooLarge(f"the request body is larger than {request.app[STATE].settings.max_body_bytes} bytes")
    return ConfigError(e.reason)


@web.middleware
async def openai_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Every failure becomes an OpenAI error body with its status; nothing else reaches the client. A client
    that went away (``ClientClosed``) gets nothing: aiohttp drops its connection without a word."""
    try:
        return await handler(request)
    except ClientClosed:
        raise
    except web.HTTPException as e:
        if e.status < 400:
            raise
        return error_response(_from_aiohttp(e, request), request)
    except Exception as e:
        return error_response(e, request)


@web.middleware
async def api_key(request: web.Request, handler: Handler) -> web.StreamResponse:
    settings = request.app[STATE].settings
    keys = settings.api_keys
    open_path = request.path in OPEN_PATHS or (settings.ui and request.path in ui.UI_PATHS)
    if keys is not None and not open_path and not keys.check(request.headers.get("Authorization")):
        raise Unauthorized("missing or invalid API key; send 'Authorization: Bearer <key>'")
    return await handler(request)


async def _close_ensembles(app: web.Application) -> None:
    for ensemble in app[STATE].ensembles.values():
        await ensemble.aclose()


async def _close_metrics(app: web.Application) -> None:
    app[STATE].metrics.close()


def create_app(ensembles: dict[str, Ensemble], settings: ServerSettings) -> web.Application:
    app = web.Application(client_max_size=settings.max_body_bytes, middlewares=[access_log, openai_errors, api_key])
    app[STATE] = ServerState(ensembles, settings)
    app.router.add_post("/v1/chat/completions", routes.chat_completions)
    app.router.add_get("/v1/models", routes.list_models)
    app.router.add_get("/v1/models/{model:.+}", routes.retrieve_model)
    app.router.add_get("/health", routes.health)
    app.router.add_get("/ready", limits_status.ready)
    app.router.add_get("/metrics", routes.metrics)
    responses.register(app)
    if settings.ui:
        ui.register(app)
    app.on_response_prepare.append(ids.add_header)
    app.on_cleanup.append(_close_ensembles)
    app.on_cleanup.append(_close_metrics)
    return app
