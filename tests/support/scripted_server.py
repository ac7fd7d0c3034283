"""A scripted OpenAI-compatible chat server on 127.0.0.1 for tests.

Per model it scripts the answer, the latency and a queue of faults (``"429"``, ``"429:2"`` with Retry-After 2,
``"500"``, ``"400"``, ``"401-echo"`` echoes the caller's Authorization header in its error, like servers that
quote the key they refused, ``"reset"`` drops the connection, ``"hang"`` never answers, or a ``Raw`` response:
any status, headers and body bytes, for upstreams that send the wrong shape), and optionally the most
likely first tokens with their log-probabilities, sent when a request asks for ``logprobs``. It records every
request it got (body, start and end time, outcome, including ``cancelled`` when the client went away) and the
peak number of requests in flight. ``/v1/embeddings`` answers with deterministic vectors from the text.
An answer may be a ``Reply``: text and/or tool calls, sent whole or streamed in OpenAI's ``delta.tool_calls`` pieces
(the id, type and name first, the arguments in two pieces after), with ``finish_reason: tool_calls``.
A model scripted with a ``template`` (``tests/support/chat_templates.py``) renders each request's messages through it, as
vLLM's server does, and answers a conversation the template refuses with vLLM's 400 (the template's own words).
"""

from __future__ import annotations

import asyncio
import json
import re
import time
import zlib
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web


@dataclass(frozen=True)
class Call:
    """One tool call of a scripted answer; ``id`` ``None`` sends the call without one."""

    name: str
    arguments: str = "{}"
    id: str | None = "call_scripted"


@dataclass(frozen=True)
class Reply:
    """A scripted answer with tool calls: ``content`` (``None`` sends null) and the calls."""

    content: str | None = None
    calls: tuple[Call, ...] = ()

    def message(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.calls:
            message["tool_calls"] = [_call_dict(c) for c in self.calls]
        return message


def _call_dict(call: Call) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "function", "function": {"name": call.name, "arguments": call.arguments}}
    if call.id is not None:
        out["id"] = call.id
    return out


Answer = Callable[[str, list[dict[str, Any]], int], "str | Reply"]
TopLogprobs = Callable[[list[dict[str, str]]], list[tuple[str, float]]]


def word_logprobs(text: str, top: int) -> list[dict[str, Any]]:
    """OpenAI's ``logprobs.content`` for ``text`` scripted as one token a word (with its leading space): word ``i``
    has logprob ``-0.1 * i``, its ``top`` alternatives itself and then ``alt1``, ``alt2``, ... one lower each."""
    content = []
    for i, token in enumerate(re.findall(r"\s*\S+", text)):
        lp = -0.1 * i
        alternatives = [(token, lp)] + [(f"alt{k}", lp - k) for k in range(1, top)]
        top_logprobs = [{"token": t, "logprob": v, "bytes": None} for t, v in alternatives[:top]]
        content.append({"token": token, "logprob": lp, "bytes": None, "top_logprobs": top_logprobs})
    return content


def default_answer(model: str, messages: list[dict[str, str]], index: int) -> str:
    return f"{model} answer {index}"


@dataclass(frozen=True)
class Raw:
    """A scripted response sent exactly as given (a wrong-shape JSON body, a broken event stream, odd headers)."""

    body: bytes | str = b""
    status: int = 200
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)


Fault = str | Raw
EMBEDDING_DIM = 16


@dataclass
class ModelScript:
    answer: Answer = default_answer
    latency_s: float = 0.0
    faults: deque[Fault] = field(default_factory=deque)
    usage_prompt: int = 10
    top_logprobs: TopLogprobs | None = None
    word_logprobs: bool = False  # asked for logprobs: one token a word (``word_logprobs``)
    cached_tokens: int | None = None  # sent as usage.prompt_tokens_details.cached_tokens when set
    template: str | None = None  # a chat template the messages must pass, else a 400 as vLLM's server sends it
    refusals: int = 0  # the 400s its template caused


@dataclass
class Recorded:
    model: str
    body: dict[str, Any]
    headers: dict[str, str]
    started: float
    ended: float | None = None
    outcome: str = "running"

    @property
    def messages(self) -> list[dict[str, str]]:
        return self.body["messages"]

    @property
    def prompt_text(self) -> str:
        return "\n".join(m["content"] or "" for m in self.messages)


class ScriptedServer:
    def __init__(self) -> None:
        self.scripts: dict[str, ModelScript] = {}
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.peak_in_flight = 0
        self._runner: web.AppRunner | None = None
        self.port = 0

    # ---- scripting -----------------------------------------------------------------------------------

    def script(
        self,
        model: str,
        *,
        answer: Answer | str | Reply | None = None,
        latency_s: float = 0.0,
        faults: list[Fault] | None = None,
        top_logprobs: TopLogprobs | None = None,
        template: str | None = None,
        word_logprobs: bool = False,
    ) -> ModelScript:
        fn = (lambda m, msgs, i, s=answer: s) if isinstance(answer, (str, Reply)) else (answer or default_answer)
        self.scripts[model] = ModelScript(
            fn,
            latency_s,
            deque(faults or []),
            top_logprobs=top_logprobs,
            template=template,
            word_logprobs=word_logprobs,
        )
        return self.scripts[model]

    def reset(self) -> None:
        self.scripts.clear()
        self.requests.clear()
        self.peak_in_flight = 0

    def for_model(self, model: str) -> list[Recorded]:
        return [r for r in self.requests if r.model == model]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    # ---- serving -------------------------------------------------------------------------------------

    async def start(self) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/embeddings", self._embeddings)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        body = await request.json()
        model = body.get("model", "")
        rec = Recorded(model, body, dict(request.headers), time.monotonic())
        self.requests.append(rec)
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
        try:
            response = await self._respond(request, body, self.scripts.get(model, ModelScript()), rec)
            rec.outcome = rec.outcome if rec.outcome != "running" else "ok"
            return response
        except asyncio.CancelledError:
            rec.outcome = "cancelled"
            raise
        except ConnectionResetError:
            rec.outcome = "cancelled"
            raise
        finally:
            rec.ended = time.monotonic()
            self.in_flight -= 1

    async def _embeddings(self, request: web.Request) -> web.StreamResponse:
        """``/v1/embeddings``: a bag-of-words vector per input (same words, same vector); the model's faults apply."""
        body = await request.json()
        rec = Recorded(body.get("model", ""), body, dict(request.headers), time.monotonic())
        self.requests.append(rec)
        script = self.scripts.get(rec.model, ModelScript())
        try:
            if script.faults:
                return await self._respond(request, body, script, rec)
            texts = [body["input"]] if isinstance(body["input"], str) else body["input"]
            rows = []
            for i, text in enumerate(texts):
                vector = [0.0] * EMBEDDING_DIM
                for word in text.lower().split():
                    vector[zlib.crc32(word.encode()) % EMBEDDING_DIM] += 1.0
                rows.append({"object": "embedding", "index": i, "embedding": vector})
            rec.outcome = "ok"
            tokens = sum(len(t.split()) for t in texts)
            usage = {"prompt_tokens": tokens, "total_tokens": tokens}
            return web.json_response({"object": "list", "data": rows, "model": rec.model, "usage": usage})
        finally:
            rec.ended = time.monotonic()

    async def _respond(self, request: web.Request, body: dict[str, Any], script: ModelScript, rec: Recorded):
        fault = script.faults.popleft() if script.faults else None
        if isinstance(fault, Raw):
            rec.outcome = f"raw {fault.status}"
            body_bytes = fault.body.encode("utf-8", "surrogatepass") if isinstance(fault.body, str) else fault.body
            headers = {"Content-Type": fault.content_type, **fault.headers}
            return web.Response(status=fault.status, body=body_bytes, headers=headers)
        if fault == "hang":
            await asyncio.sleep(3600)
        if fault == "reset":
            rec.outcome = "reset"
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if fault is not None:
            status, _, retry_after = fault.partition(":")
            message = f"scripted {status}"
            if status == "401-echo":
                status, message = "401", f"invalid key: {request.headers.get('Authorization', '')}"
            rec.outcome = f"status {status}"
            headers = {"Retry-After": retry_after} if retry_after else {}
            error = {"error": {"message": message, "type": "scripted", "param": None, "code": None}}
            return web.json_response(error, status=int(status), headers=headers)
        if script.template is not None:
            refused = _template_refusal(script.template, body["messages"])
            if refused is not None:
                script.refusals += 1
                rec.outcome = "status 400"
                error = {"error": {"message": refused, "type": "BadRequestError", "param": None, "code": 400}}
                return web.json_response(error, status=400)
        await asyncio.sleep(script.latency_s)
        n = int(body.get("n", 1))
        answers = [script.answer(rec.model, body["messages"], i) for i in range(n)]
        if any(isinstance(a, Reply) for a in answers):
            return await self._reply(request, rec.model, answers, body)
        texts = [a for a in answers if isinstance(a, str)]
        max_tokens = body.get("max_tokens")
        if max_tokens is not None:
            texts = [" ".join(t.split(" ")[:max_tokens]) for t in texts]
        usage = {"prompt_tokens": script.usage_prompt, "completion_tokens": sum(len(t.split()) for t in texts)}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        if script.cached_tokens is not None:
            usage["prompt_tokens_details"] = {"cached_tokens": script.cached_tokens}
        if body.get("stream"):
            return await self._stream(request, rec.model, texts[0], usage, body, script)
        choices = [
            {"index": i, "message": {"role": "assistant", "content": t}, "finish_reason": "stop"}
            for i, t in enumerate(texts)
        ]
        if body.get("logprobs") and script.top_logprobs is not None:
            top = script.top_logprobs(body["messages"])  # the sampled token first
            alternatives = [{"token": t, "logprob": lp} for t, lp in top[: body.get("top_logprobs") or 0]]
            first = {"token": top[0][0], "logprob": top[0][1], "top_logprobs": alternatives}
            for choice in choices:
                choice["logprobs"] = {"content": [first]}
        elif (
            body.get("logprobs") and script.word_logprobs
        ):  # one position a word: its logprob -0.1 x its place, alternatives below it
            for choice, text in zip(choices, texts, strict=True):
                choice["logprobs"] = {"content": word_logprobs(text, body.get("top_logprobs") or 0)}
        return web.json_response(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 0,
                "model": rec.model,
                "choices": choices,
                "usage": usage,
            }
        )

    async def _reply(self, request, model: str, answers: list[str | Reply], body: dict[str, Any]):
        """Answers with tool calls, whole or streamed."""
        replies = [a if isinstance(a, Reply) else Reply(a) for a in answers]
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        reason = ["tool_calls" if r.calls else "stop" for r in replies]
        if not body.get("stream"):
            choices = [{"index": i, "message": r.message(), "finish_reason": reason[i]} for i, r in enumerate(replies)]
            return web.json_response(
                {
                    "id": "x",
                    "object": "chat.completion",
                    "created": 0,
                    "model": model,
                    "choices": choices,
                    "usage": usage,
                }
            )
        reply = replies[0]
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        base = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": model}

        async def send(delta: dict[str, Any], finish_reason: str | None = None) -> None:
            choice = {"index": 0, "delta": delta, "finish_reason": finish_reason}
            await resp.write(f"data: {json.dumps({**base, 'choices': [choice]})}\n\n".encode())

        await send({"role": "assistant"})
        if reply.content:
            await send({"content": reply.content})
        for i, call in enumerate(reply.calls):
            first = {"index": i, "type": "function", "function": {"name": call.name, "arguments": ""}}
            if call.id is not None:
                first["id"] = call.id
            await send({"tool_calls": [first]})
            half = len(call.arguments) // 2
            for part in (call.arguments[:half], call.arguments[half:]):
                await send({"tool_calls": [{"index": i, "function": {"arguments": part}}]})
        await send({}, reason[0])
        if (body.get("stream_options") or {}).get("include_usage"):
            await resp.write(f"data: {json.dumps({**base, 'choices': [], 'usage': usage})}\n\n".encode())
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp

    async def _stream(
        self, request, model: str, text: str, usage: dict[str, Any], body: dict[str, Any], script: ModelScript
    ):
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)

        async def send(obj: dict[str, Any]) -> None:
            await resp.write(f"data: {json.dumps(obj)}\n\n".encode())

        base = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": model}
        await send({**base, "choices": [{"index": 0, "delta": {"role": "assistant"}, "finish_reason": None}]})
        words = text.split(" ")
        # asked for logprobs with word_logprobs scripted: each word's chunk carries its position, as OpenAI streams
        positions = word_logprobs(text, body.get("top_logprobs") or 0) if body.get("logprobs") else []
        streams_logprobs = script.word_logprobs and len(positions) == len(words)
        for i, word in enumerate(words):
            piece = word if i == 0 else " " + word
            choice: dict[str, Any] = {"index": 0, "delta": {"content": piece}, "finish_reason": None}
            if streams_logprobs:
                choice["logprobs"] = {"content": [positions[i]]}
            await send({**base, "choices": [choice]})
            await asyncio.sleep(self.scripts.get(model, ModelScript()).latency_s / 10)
        await send({**base, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            await send({**base, "choices": [], "usage": usage})
        await resp.write(b"data: [DONE]\n\n")
        await resp.write_eof()
        return resp


def _template_refusal(template: str, messages: list[dict[str, str]]) -> str | None:
    """What vLLM's server says when ``template`` refuses ``messages`` (the template's own exception text, as its
    ``safe_apply_chat_template`` reports it); ``None`` when the template renders them."""
    import jinja2

    from tests.support.chat_templates import render

    try:
        render(template, messages)
    except jinja2.TemplateError as e:
        return str(e)
    return None
