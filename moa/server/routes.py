"""The handlers: chat completions (whole or streamed), models, health and metrics."""

from __future__ import annotations

import logging
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from aiohttp import web

from moa.context import RequestContext
from moa.ensemble import Ensemble, without_unsupported
from moa.errors import ConfigError
from moa.server import ids, limits_status
from moa.server.admission import Book, admitted, bookkept, check_room, read_json
from moa.server.choices import complete_choices, stream_choices
from moa.server.errors import (
    ModelNotFound,
)
from moa.server.panel import streamed_entry, whole_panel
from moa.server.schema import ParsedChat, parse_chat_request
from moa.server.state import STATE, ServerState
from moa.server.streaming import ChunkFormat, StreamResult, trace_entry, write_stream
from moa.types import Completion, Usage

log = logging.getLogger(__name__)


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Refuse what cannot run (in this order: busy server, not JSON, unreadable body, unknown model, bad
    fields) before taking a place in the queue; then run. Every model call is counted, whatever the end
    (``moa.server.admission.bookkept``)."""

    async def handle(book: Book) -> web.StreamResponse:
        state = request.app[STATE]
        check_room(state)
        body = await read_json(request, state.settings)
        book.label, ensemble = _ensemble_of(state, body)
        parsed = parse_chat_request(body, lenient=state.settings.lenient)
        if state.settings.lenient:
            parsed = lenient(parsed, ensemble)
        async with admitted(state):
            if parsed.stream:
                result = StreamResult()
                response = await _stream(request, ensemble, parsed, result=result, runs=book.runs)
                book.status = result.error_status or response.status
            else:
                rid = ids.request_id(request)
                response = await _complete(ensemble, parsed, rid, book.runs, trace_context(request))
                book.status = response.status
        return response

    return await bookkept(request, handle)


#: the header of a ``--lenient`` answer naming the request fields it ignored
IGNORED_HEADER = "x-moa-ignored-fields"


def lenient(parsed: ParsedChat, ensemble: Ensemble) -> ParsedChat:
    """``parsed`` less the fields the ensemble's backends cannot honour, each added to what it ignores."""
    request, dropped = without_unsupported(ensemble.config, parsed.request)
    return replace(parsed, request=request, ignored=(*parsed.ignored, *dropped))


def ignored_headers(parsed: ParsedChat) -> dict[str, str]:
    return {IGNORED_HEADER: ", ".join(parsed.ignored)} if parsed.ignored else {}


#: the W3C Trace Context headers a client's trace is joined by (nothing else of its headers reaches the tracer)
TRACE_HEADERS = ("traceparent", "tracestate")


def trace_context(request: web.Request) -> dict[str, str] | None:
    """The client's ``traceparent`` and ``tracestate``, for the request's span to join its trace; ``None`` when it
    sent no ``traceparent`` (its span is then the root of a trace of its own)."""
    if "traceparent" not in request.headers:
        return None
    return {name: request.headers[name] for name in TRACE_HEADERS if name in request.headers}


def _ensemble_of(state: ServerState, body: Any) -> tuple[str, Ensemble]:
    """The requested ensemble and its name, checked before any other field: an unknown model is 404 however
    wrong the rest is. A missing or non-string ``model`` is left to the schema (a 400 naming it)."""
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, str):
        parse_chat_request(body)  # raises, naming what is wrong
        raise ConfigError("must be a string", "model")  # not reached: the schema requires a string
    return model, ensemble_named(state, model)


def ensemble_named(state: ServerState, model: str) -> Ensemble:
    ensemble = state.ensembles.get(model)
    if ensemble is None:
        raise ModelNotFound(f"no ensemble named {model!r}; this server has: {', '.join(state.ensembles)}", "model")
    return ensemble


#: the headers of a whole (not streamed) answer that say what it cost, for proxies that track spend
COST_HEADER, TOKENS_HEADER = "x-moa-cost-usd", "x-moa-total-tokens"


async def _complete(
    ensemble: Ensemble,
    parsed: ParsedChat,
    request_id: str,
    runs: list[RequestContext],
    trace_context: dict[str, str] | None = None,
) -> web.Response:
    completions = await complete_choices(ensemble, parsed, request_id, runs, trace_context)
    body = completion_body(parsed, completions)
    headers = {**usage_headers(Usage.model_validate(body["usage"])), **ignored_headers(parsed)}
    return web.json_response(body, headers=headers)


def usage_headers(usage: Usage) -> dict[str, str]:
    """``x-moa-total-tokens``, and ``x-moa-cost-usd`` when every call was priced. A stream's headers leave
    before its calls are made, so only whole answers carry them; a stream's usage chunk has the same figures."""
    headers = {TOKENS_HEADER: str(usage.total_tokens)}
    if usage.cost is not None:
        headers[COST_HEADER] = f"{usage.cost:.10f}".rstrip("0").rstrip(".") or "0"
    return headers


def _message(completion: Completion) -> dict[str, Any]:
    """The answer's message: ``content`` always (null when it only calls tools), ``tool_calls`` when it makes any."""
    message = completion.choices[0].message
    return {**message.model_dump(exclude_none=True), "content": message.content}


def completion_body(parsed: ParsedChat, completions: list[Completion]) -> dict[str, Any]:
    """One ``chat.completion`` of ``n`` choices; usage sums every model call behind every choice."""
    calls = [r for c in completions for r in c.trace]
    body: dict[str, Any] = {
        "id": completions[0].id,
        "object": "chat.completion",
        "created": completions[0].created,
        "model": parsed.model,
        "choices": [
            {
                "index": i,
                "message": _message(c),
                "logprobs": c.choices[0].logprobs,
                "finish_reason": c.choices[0].finish_reason,
            }
            for i, c in enumerate(completions)
        ],
        "usage": Usage.total(calls).model_dump(exclude_none=True),
    }
    if parsed.trace:
        body["moa_trace"] = [
            {**trace_entry(i, c.trace, c.defense), "proposals": [p.model_dump() for p in c.proposals]}
            for i, c in enumerate(completions)
        ]
    if parsed.include_proposals:
        body["moa"] = {"proposals": whole_panel(completions)}
    return body


async def _stream(
    request: web.Request, ensemble: Ensemble, parsed: ParsedChat, *, result: StreamResult, runs: list[RequestContext]
) -> web.StreamResponse:
    state = request.app[STATE]
    fmt = ChunkFormat(parsed.model, parsed.include_usage, parsed.request.params.logprobs)
    deltas = stream_choices(ensemble, parsed, ids.request_id(request), runs, trace_context(request))
    try:
        async with aclosing(deltas):
            return await write_stream(
                request,
                deltas,
                fmt,
                n=parsed.n,
                want_usage=parsed.include_usage,
                want_trace=parsed.trace,
                result=result,
                headers=ignored_headers(parsed),
                panel=(lambda i, event: streamed_entry(i, event, runs[i].trace)) if parsed.include_proposals else None,
            )
    finally:
        if result.first_token_s is not None:
            state.metrics.record_first_token(parsed.model, result.first_token_s)


def _model_card(name: str, ensemble: Ensemble) -> dict[str, Any]:
    return {"id": name, "object": "model", "created": 0, "owned_by": "moa", "description": ensemble.config.description}


async def list_models(request: web.Request) -> web.Response:
    ensembles = request.app[STATE].ensembles
    return web.json_response({"object": "list", "data": [_model_card(n, e) for n, e in ensembles.items()]})


async def retrieve_model(request: web.Request) -> web.Response:
    state = request.app[STATE]
    name = request.match_info["model"]
    return web.json_response(_model_card(name, ensemble_named(state, name)))


async def health(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if state.draining:
        return web.json_response({"status": "draining"}, status=503)
    body: dict[str, Any] = {"status": "ok", "ensembles": list(state.ensembles)}
    limits_status.describe(state, body)
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    limits_status.record(request.app[STATE].metrics, request.app[STATE])
    body, content_type = request.app[STATE].metrics.render(request.headers.get("Accept", ""))
    return web.Response(body=body, headers={"Content-Type": content_type})
