"""The handlers: chat completions (whole or streamed), models, health and metrics."""

from __future__ import annotations

import asyncio
import json
import logging
import time
from contextlib import aclosing
from dataclasses import replace
from typing import Any

from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from moa.context import RequestContext
from moa.ensemble import Ensemble, without_unsupported
from moa.errors import ConfigError
from moa.server import ids, limits_status
from moa.server.access import ACCESS, Access
from moa.server.choices import complete_choices, stream_choices
from moa.server.errors import (
    BodyReadTimeout,
    BodyTooLarge,
    MalformedRequest,
    ModelNotFound,
    QueueFull,
    ShuttingDown,
    UnsupportedMediaType,
    error_for,
)
from moa.server.panel import streamed_entry, whole_panel
from moa.server.protocol import describe
from moa.server.schema import ParsedChat, parse_chat_request
from moa.server.state import STATE, ServerSettings, ServerState
from moa.server.streaming import ChunkFormat, StreamResult, trace_entry, uncancel, write_stream
from moa.types import Completion, Usage

log = logging.getLogger(__name__)

#: status recorded for a request whose client went away before the answer (nginx's convention)
CLIENT_CLOSED = 499
#: the metrics label of a request whose ensemble is not known (client-chosen names would be unbounded)
UNKNOWN = "unknown"
JSON = "application/json"


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """Refuse what cannot run (in this order: busy server, not JSON, unreadable body, unknown model, bad
    fields) before taking a place in the queue; then run. Every model call is counted, whatever the end."""
    state = request.app[STATE]
    started = time.monotonic()
    label, status = UNKNOWN, CLIENT_CLOSED
    runs: list[RequestContext] = []  # every run of this request (a choice each), with the calls it made
    task = asyncio.current_task()
    if task is not None:
        state.handlers.add(task)
    try:
        _check_room(state)
        body = await _read_json(request, state.settings)
        label, ensemble = _ensemble_of(state, body)
        parsed = parse_chat_request(body, lenient=state.settings.lenient)
        if state.settings.lenient:
            parsed = lenient(parsed, ensemble)
        _admit(state)
        rid = ids.request_id(request)
        try:
            if parsed.stream:
                result = StreamResult()
                response = await _stream(request, ensemble, parsed, result=result, runs=runs)
                status = result.error_status or response.status
            else:
                response = await _complete(ensemble, parsed, rid, runs, trace_context(request))
                status = response.status
        finally:
            state.admitted -= 1
            state.metrics.in_flight.set(state.admitted)
        return response
    except asyncio.CancelledError:
        if not state.cut_off:
            raise  # the client went away (aiohttp cancels the handler of a closed connection): 499
        uncancel()  # the drain timeout passed: this request still gets its answer, a 503
        status = 503
        raise ShuttingDown(
            "the server shut down before the answer was ready (--drain-timeout); retry on another replica"
        ) from None
    except Exception as e:
        status = error_for(e)[0]
        raise
    finally:
        if task is not None:
            state.handlers.discard(task)
        if status == CLIENT_CLOSED:
            log.info("the client closed the connection before the answer was complete (%d)", CLIENT_CLOSED)
        calls = [r for run in runs for r in run.trace]
        state.metrics.record_calls(label, calls)
        state.metrics.record_request(label, status, time.monotonic() - started)
        request[ACCESS] = Access(label, status, Usage.total(calls))


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


def _check_room(state: ServerState) -> None:
    if state.draining:
        raise ShuttingDown("the server is shutting down; send the request to another replica")
    if state.admitted >= state.settings.max_queue:
        raise QueueFull(f"the server already holds its limit of {state.settings.max_queue} requests; retry later")


def _admit(state: ServerState) -> None:
    _check_room(state)  # again: the body took a while, others may have come in meanwhile
    state.admitted += 1
    state.metrics.in_flight.set(state.admitted)


async def _read_json(request: web.Request, settings: ServerSettings) -> Any:
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


def _ensemble_of(state: ServerState, body: Any) -> tuple[str, Ensemble]:
    """The requested ensemble and its name, checked before any other field: an unknown model is 404 however
    wrong the rest is. A missing or non-string ``model`` is left to the schema (a 400 naming it)."""
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, str):
        parse_chat_request(body)  # raises, naming what is wrong
        raise ConfigError("must be a string", "model")  # not reached: the schema requires a string
    return model, _ensemble(state, model)


def _ensemble(state: ServerState, model: str) -> Ensemble:
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
    fmt = ChunkFormat(parsed.model, parsed.include_usage)
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
    return web.json_response(_model_card(name, _ensemble(state, name)))


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
