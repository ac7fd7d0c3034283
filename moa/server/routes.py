"""The handlers: chat completions (whole or streamed), models, health and metrics."""

from __future__ import annotations

import json
import time
from contextlib import aclosing
from typing import Any

from aiohttp import web

from moa.ensemble import Ensemble
from moa.errors import ConfigError
from moa.server.choices import complete_choices, stream_choices
from moa.server.errors import BodyTooLarge, ModelNotFound, QueueFull, ShuttingDown, error_for
from moa.server.metrics import CONTENT_TYPE
from moa.server.schema import ParsedChat, parse_chat_request
from moa.server.state import STATE, ServerState
from moa.server.streaming import ChunkFormat, StreamResult, trace_entry, write_stream
from moa.types import Completion, Usage

#: status recorded for a request whose client went away before the answer (nginx's convention)
CLIENT_CLOSED = 499


async def chat_completions(request: web.Request) -> web.StreamResponse:
    state = request.app[STATE]
    started = time.monotonic()
    label, status = "unknown", CLIENT_CLOSED
    try:
        _admit(state)
        try:
            parsed = parse_chat_request(await _read_json(request, state.settings.max_body_bytes))
            ensemble = _ensemble(state, parsed.model)
            label = parsed.model
            if parsed.stream:
                response = await _stream(request, state, ensemble, parsed)
            else:
                response = await _complete(state, ensemble, parsed)
        finally:
            state.admitted -= 1
            state.metrics.in_flight.set(state.admitted)
        status = response.status
        return response
    except Exception as e:
        status = error_for(e)[0]
        state.metrics.record_calls(label, getattr(e, "trace", None) or [])
        raise
    finally:
        state.metrics.record_request(label, status, time.monotonic() - started)


def _admit(state: ServerState) -> None:
    if state.draining:
        raise ShuttingDown("the server is shutting down; send the request to another replica")
    if state.admitted >= state.settings.max_queue:
        raise QueueFull(f"the server already holds its limit of {state.settings.max_queue} requests; retry later")
    state.admitted += 1
    state.metrics.in_flight.set(state.admitted)


async def _read_json(request: web.Request, limit: int) -> Any:
    if request.content_length is not None and request.content_length > limit:
        raise BodyTooLarge(f"the request body is larger than {limit} bytes")
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise BodyTooLarge(f"the request body is larger than {limit} bytes") from None
    try:
        return json.loads(raw)
    except (ValueError, RecursionError) as e:  # JSONDecodeError and UnicodeDecodeError are ValueErrors
        raise ConfigError(f"the request body is not valid JSON ({type(e).__name__})") from None


def _ensemble(state: ServerState, model: str) -> Ensemble:
    ensemble = state.ensembles.get(model)
    if ensemble is None:
        raise ModelNotFound(f"no ensemble named {model!r}; this server has: {', '.join(state.ensembles)}", "model")
    return ensemble


async def _complete(state: ServerState, ensemble: Ensemble, parsed: ParsedChat) -> web.Response:
    completions = await complete_choices(ensemble, parsed)
    for c in completions:
        state.metrics.record_calls(parsed.model, c.trace)
    return web.json_response(completion_body(parsed, completions))


def completion_body(parsed: ParsedChat, completions: list[Completion]) -> dict[str, Any]:
    """One ``chat.completion`` of ``n`` choices; usage sums every model call behind every choice."""
    calls = [r for c in completions for r in c.trace]
    body: dict[str, Any] = {
        "id": completions[0].id, "object": "chat.completion", "created": completions[0].created,
        "model": parsed.model,
        "choices": [
            {"index": i, "message": {"role": "assistant", "content": c.text}, "logprobs": None,
             "finish_reason": c.choices[0].finish_reason}
            for i, c in enumerate(completions)
        ],
        "usage": Usage.total(calls).model_dump(),
    }  # fmt: skip
    if parsed.trace:
        body["moa_trace"] = [
            {**trace_entry(i, c.trace, c.defense), "proposals": [p.model_dump() for p in c.proposals]}
            for i, c in enumerate(completions)
        ]
    return body


async def _stream(request: web.Request, state: ServerState, ensemble: Ensemble, parsed: ParsedChat):
    result = StreamResult()
    fmt = ChunkFormat(parsed.model, parsed.include_usage)
    try:
        async with aclosing(stream_choices(ensemble, parsed)) as deltas:
            return await write_stream(request, deltas, fmt, parsed.n, parsed.include_usage, parsed.trace, result)
    finally:
        state.metrics.record_calls(parsed.model, result.calls)
        if result.first_token_s is not None:
            state.metrics.ttft.observe(result.first_token_s, ensemble=parsed.model)


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
    return web.json_response({"status": "ok", "ensembles": list(state.ensembles)})


async def metrics(request: web.Request) -> web.Response:
    text = request.app[STATE].metrics.render()
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})
