"""The Responses API's handlers: create (whole or streamed), retrieve, delete, list input items.

A created response runs through the same path as a chat completion: its request becomes the one
``ParsedChat`` (``schema.ParsedResponses.chat``), run by ``moa.server.choices`` under the same queue, drain,
metrics and access log. With ``store`` (the default) a response that finished (``completed`` or
``incomplete``) is written to the store before its answer (or last event) leaves, with the resolved history,
so a continuation reads one record whatever the chain's length. A response belongs to its tenant
(``tenant_of``: a digest of the API key, one tenant without keys); another tenant's id is "not found", as an
id that never was.
"""

from __future__ import annotations

import hashlib
import logging
from contextlib import aclosing
from typing import Any

from aiohttp import web

from moa.context import RequestContext
from moa.ensemble import refuse_unread_parts
from moa.errors import ConfigError
from moa.server import ids
from moa.server import routes as chat
from moa.server.admission import Book, admitted, bookkept, check_room, read_json
from moa.server.choices import complete_choices, stream_choices
from moa.server.errors import ResponseNotFound
from moa.server.responses.events import EventFormat, write_events
from moa.server.responses.items import Item
from moa.server.responses.objects import ResponseDraft
from moa.server.responses.schema import ParsedResponses, parse_responses_request
from moa.server.responses.store import ResponseStore, StoredResponse, default_store_url, open_store
from moa.server.state import STATE, ServerState
from moa.server.streaming import StreamResult, trace_entry
from moa.tools import ToolCall
from moa.types import CallRecord, Usage

log = logging.getLogger(__name__)

STORE = web.AppKey("moa_response_store", ResponseStore)
#: ``input_items``' page size: OpenAI's default and ceiling
DEFAULT_LIMIT, MAX_LIMIT = 20, 100
_LIST_PARAMS = frozenset({"order", "after", "limit", "include"})


def register(app: web.Application) -> None:
    """Add the Responses routes and the store they share (opened at start-up, closed at clean-up)."""
    settings = app[STATE].settings
    app[STORE] = open_store(settings.response_store or default_store_url(), settings.response_ttl_s)
    app.router.add_post("/v1/responses", create_response)
    app.router.add_get("/v1/responses/{response_id}", retrieve_response)
    app.router.add_delete("/v1/responses/{response_id}", delete_response)
    app.router.add_get("/v1/responses/{response_id}/input_items", list_input_items)
    app.on_startup.append(_open_store)
    app.on_cleanup.append(_close_store)


async def _open_store(app: web.Application) -> None:
    """Open the store before the server listens. A store named with ``--response-store`` that cannot be opened
    stops the server (an error naming the option); the default one does not: chat completions do not need it,
    so the server starts, logs why, and the Responses API answers without storing (reads are 503)."""
    try:
        await app[STORE].open()
    except ConfigError as e:
        if app[STATE].settings.response_store is not None:
            raise
        log.warning("responses will not be stored: the default response store cannot be opened (%s)", e)


async def _close_store(app: web.Application) -> None:
    await app[STORE].aclose()


def tenant_of(request: web.Request) -> str:
    """Whose responses a request reads and writes: a digest of its API key when the server checks keys (the key
    was checked already), else ``""``, the one tenant of a keyless server."""
    if request.app[STATE].settings.api_keys is None:
        return ""
    token = request.headers.get("Authorization", "").partition(" ")[2].strip()
    return hashlib.sha256(token.encode("utf-8", "replace")).hexdigest()[:32]


def _not_found(response_id: str, param: str | None = None) -> ResponseNotFound:
    return ResponseNotFound(f"no response found with id {response_id[:100]!r}", param)


async def _stored(request: web.Request, response_id: str, param: str | None = None) -> StoredResponse:
    record = await request.app[STORE].get(tenant_of(request), response_id)
    if record is None:
        raise _not_found(response_id, param)
    return record


# ---- POST /v1/responses -----------------------------------------------------------------------------------


async def create_response(request: web.Request) -> web.StreamResponse:
    """Refuse what cannot run (busy server, not JSON, unreadable body, unknown model, bad fields, unknown
    ``previous_response_id``) before taking a place in the queue; then run, as a chat completion does (the same
    admission and bookkeeping, ``moa.server.admission``)."""

    async def handle(book: Book) -> web.StreamResponse:
        state = request.app[STATE]
        check_room(state)
        body = await read_json(request, state.settings)
        book.label = _model_of(state, body)
        parsed = parse_responses_request(body, lenient=state.settings.lenient)
        history: list[Item] = []
        if parsed.body.previous_response_id is not None:
            previous = await _stored(request, parsed.body.previous_response_id, "previous_response_id")
            history = previous.history
        async with admitted(state):
            response, book.status = await _run(request, parsed, history, book.runs)
        return response

    return await bookkept(request, handle)


def _model_of(state: ServerState, body: Any) -> str:
    """The requested ensemble's name, checked before any other field (an unknown model is 404 however wrong the
    rest is); a missing or non-string ``model`` is left to the schema."""
    model = body.get("model") if isinstance(body, dict) else None
    if not isinstance(model, str):
        parse_responses_request(body)  # raises, naming what is wrong
        raise ConfigError("must be a string", "model")
    chat.ensemble_named(state, model)
    return model


def _calls(runs: list[RequestContext]) -> list[CallRecord]:
    return [r for run in runs for r in run.trace]


async def _run(
    request: web.Request, parsed: ParsedResponses, history: list[Item], runs: list[RequestContext]
) -> tuple[web.StreamResponse, int]:
    state = request.app[STATE]
    ensemble = state.ensembles[parsed.body.model]
    request_chat = parsed.chat(history)
    try:  # before the run (which checks it too): its error names the input part, not the chat message
        refuse_unread_parts(ensemble.config, request_chat.request)
    except ConfigError as e:
        message = str(e).removeprefix(f"{e.path}: ") if e.path else str(e)
        raise ConfigError(message, parsed.field_of(history, e.path)) from None
    if state.settings.lenient:
        request_chat = chat.lenient(request_chat, ensemble)
    headers = chat.ignored_headers(request_chat)
    draft = ResponseDraft(parsed)
    rid = ids.request_id(request)

    async def keep(response: dict[str, Any]) -> dict[str, Any]:
        if parsed.body.store is False:
            return response
        output: list[Item] = response["output"]
        record = StoredResponse(
            draft.id, tenant_of(request), draft.created_at, response, parsed.input, history + parsed.input + output
        )
        try:
            await request.app[STORE].put(record)
        except Exception as e:  # the answer is not lost for it: the client is told it was not stored
            log.warning("response %s was not stored: %s", draft.id, e)
            return {**response, "store": False}
        return response

    if not parsed.body.stream:
        (completion,) = await complete_choices(ensemble, request_chat, rid, runs, chat.trace_context(request))
        trace = None
        if parsed.body.moa_trace:
            entry = trace_entry(0, completion.trace, completion.defense)
            trace = [{**entry, "proposals": [p.model_dump() for p in completion.proposals]}]
        usage = Usage.total(completion.trace)
        calls = tuple(
            ToolCall(c["id"], c["function"]["name"], c["function"]["arguments"]) for c in completion.tool_calls
        )
        reason = completion.choices[0].finish_reason
        finished = await keep(draft.finish(completion.text, calls, reason, usage, trace))
        return web.json_response(finished, headers={**chat.usage_headers(usage), **headers}), 200

    result = StreamResult()
    deltas = stream_choices(ensemble, request_chat, rid, runs, chat.trace_context(request))

    async def on_finish(response: dict[str, Any]) -> None:
        stored = await keep(response)
        response["store"] = stored["store"]

    try:
        async with aclosing(deltas):
            streamed = await write_events(
                request,
                deltas,
                EventFormat(draft),
                want_trace=parsed.body.moa_trace,
                result=result,
                on_finish=on_finish,
                calls_so_far=lambda: _calls(runs),
                headers=headers,
            )
    finally:
        if result.first_token_s is not None:
            state.metrics.record_first_token(parsed.body.model, result.first_token_s)
    return streamed, result.error_status or streamed.status


# ---- GET / DELETE /v1/responses/{id}, GET /v1/responses/{id}/input_items -----------------------------------


async def retrieve_response(request: web.Request) -> web.Response:
    _refuse_query(request, frozenset({"include", "stream", "starting_after", "include_obfuscation"}))
    if request.query.get("stream") not in (None, "false"):
        raise ConfigError("streaming a stored response again is not supported", "stream")
    record = await _stored(request, request.match_info["response_id"])
    return web.json_response(record.response)


async def delete_response(request: web.Request) -> web.Response:
    _refuse_query(request, frozenset())
    response_id = request.match_info["response_id"]
    if not await request.app[STORE].delete(tenant_of(request), response_id):
        raise _not_found(response_id)
    return web.json_response({"id": response_id, "object": "response.deleted", "deleted": True})


async def list_input_items(request: web.Request) -> web.Response:
    """A page of the response's own input items: ``order`` (``desc``, newest first, by default), ``after`` (an
    item id: the page starts after it), ``limit`` (1 to 100, default 20)."""
    _refuse_query(request, _LIST_PARAMS)
    order = request.query.get("order", "desc")
    if order not in ("asc", "desc"):
        raise ConfigError("must be 'asc' or 'desc'", "order")
    limit = _limit(request.query.get("limit"))
    record = await _stored(request, request.match_info["response_id"])
    items = record.input_items if order == "asc" else record.input_items[::-1]
    after = request.query.get("after")
    if after is not None:
        at = next((i for i, item in enumerate(items) if item.get("id") == after), None)
        if at is None:
            raise ConfigError(f"no input item {after[:100]!r} in this response", "after")
        items = items[at + 1 :]
    page = items[:limit]
    return web.json_response(
        {
            "object": "list",
            "data": page,
            "first_id": page[0]["id"] if page else None,
            "last_id": page[-1]["id"] if page else None,
            "has_more": len(items) > limit,
        }
    )


def _limit(value: str | None) -> int:
    if value is None:
        return DEFAULT_LIMIT
    if not value.isdigit() or not 1 <= int(value) <= MAX_LIMIT:
        raise ConfigError(f"must be a whole number from 1 to {MAX_LIMIT}", "limit")
    return int(value)


def _refuse_query(request: web.Request, known: frozenset[str]) -> None:
    for name in request.query:
        if name not in known:
            raise ConfigError("unknown query parameter", name[:100])
