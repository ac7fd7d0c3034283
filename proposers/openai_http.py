"""A proposer for any OpenAI-compatible ``/chat/completions`` (and ``/embeddings``) API, over one pooled aiohttp
session.

Upstream bodies are validated with the models of ``proposers.openai_schema``: a wrong shape is a
``MalformedResponseError`` naming the field. Upstream text in an error is masked (``moa.redact``: the API key and
every configured header value) after the error is classified.
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from datetime import UTC
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp
from pydantic import ValidationError

from moa.config import OpenAIBackendConfig
from moa.content import with_markers
from moa.errors import (
    APIConnectionError,
    BackendError,
    ConfigError,
    ContextLengthError,
    MalformedResponseError,
    ServerError,
    error_for_status,
)
from moa.redact import MIN_FREE_LENGTH, Redactor
from moa.telemetry import upstream_headers, upstream_response
from moa.tools import ToolCall, ToolCallDelta, unique_ids
from moa.types import Delta, GenerateResult, Generation, Message, SamplingParams, TopLogprobs, Usage
from proposers.chat_template import TemplateRules, developer_as_system
from proposers.openai_schema import (
    ChatCompletion,
    ChatCompletionChunk,
    ChoiceLogprobs,
    CreateEmbeddingResponse,
    EmbeddingResult,
    ErrorBody,
    MessageToolCall,
    ToolCallPiece,
    describe,
    parse_body,
)
from proposers.sse import iter_sse_data
from proposers.template_learning import TemplateLayouts

_MAX_ERROR_CHARS = 500
_CONTEXT_HINTS = ("context length", "context_length", "maximum context", "too long", "max_model_len")


class OpenAIProposer:
    """Speaks the OpenAI chat completions protocol; one aiohttp session per backend, made on first use."""

    def __init__(self, name: str, config: OpenAIBackendConfig, *, config_path: str | None = None) -> None:
        self.name = name
        self.config = config
        self.supports_n = config.supports_n
        self.fields = config.field_support()  # the sampling fields it sends; it refuses any other that is set
        self._url = f"{config.base_url}/chat/completions"
        self._embeddings_url = f"{config.base_url}/embeddings"
        self._api_key = self._read_key(config, config_path or f"backends.{name}")
        self._redact = Redactor(_secrets(self._api_key, config.headers))
        self._session: aiohttp.ClientSession | None = None
        declared = None if config.chat_template is None else TemplateRules.of(config.chat_template)
        self.templates = TemplateLayouts(name, declared)  # each model's chat-template rules: declared or learned

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIProposer(name={self.name!r}, base_url={self.config.base_url!r})"

    @staticmethod
    def _read_key(config: OpenAIBackendConfig, path: str) -> str | None:
        if config.api_key_env is None:
            return None
        key = os.environ.get(config.api_key_env)
        if not key:
            raise ConfigError(f"environment variable {config.api_key_env} is not set", f"{path}.api_key_env")
        return key

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            limit = self.config.rate_limit.concurrency or 0  # 0: no cap beyond the engine's own limiter
            headers = {"Content-Type": "application/json", **self.config.headers}
            if self._api_key:
                headers["Authorization"] = f"Bearer {self._api_key}"
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=limit, limit_per_host=0),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, sock_connect=30),
            )
        return self._session

    def _body(
        self, messages: list[Message], params: SamplingParams, *, n: int, model: str | None, stream: bool
    ) -> dict[str, Any]:
        model = model or self.config.model
        body: dict[str, Any] = {"model": model, "messages": [m.to_dict() for m in messages]}
        if n != 1:
            body["n"] = n
        body.update(self.fields.wire(params, self.name))  # each under its own name: OpenAI's, vLLM's extensions
        if params.tools is not None:
            body.update(params.tools.wire())
        if params.logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = params.logprobs
        if stream:
            body["stream"] = True
            if self.config.stream_usage:
                body["stream_options"] = {"include_usage": True}
        return body

    def _fitted(self, messages: list[Message]) -> tuple[list[Message], str | None]:
        """``messages`` as this upstream takes them: parts it does not read (``input:``) as markers, ``developer``
        as ``system`` unless it keeps it; and what changed."""
        messages, marked = with_markers(messages, self.config.reads)
        developer = None
        if not self.config.keeps_developer:
            messages, developer = developer_as_system(messages)
        return messages, _notes(marked, developer)

    @contextmanager
    def _mapped_errors(self) -> Iterator[None]:
        """Turn aiohttp's and the decoder's failures into moa's tree, in one place; every message masked."""
        try:
            yield
        except MalformedResponseError as e:
            if e.backend is not None:
                raise
            raise MalformedResponseError(self._redact(f"{self.name}: {e}"), backend=self.name) from None
        except BackendError:
            raise
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
            raise APIConnectionError(
                self._redact(f"{self.name}: connection failed: {type(e).__name__}: {e}"), backend=self.name
            ) from None

    def _malformed(self, error: ValidationError, what: str = "") -> MalformedResponseError:
        message = self._redact(f"{self.name}: malformed response: {describe(error, what)}")
        return MalformedResponseError(message, backend=self.name)

    async def _raise_for_status(self, resp: aiohttp.ClientResponse) -> None:
        if resp.status < 400:
            return
        raw = await resp.read()
        try:
            error = parse_body(ErrorBody, raw).error
            message = error if isinstance(error, str) else error.message or ""
        except ValidationError:
            message = raw.decode("utf-8", "replace").strip() or resp.reason or ""
        cls = error_for_status(resp.status)
        if resp.status == 400 and any(h in message.lower() for h in _CONTEXT_HINTS):
            cls = ContextLengthError  # decided on the upstream's own words, before masking changes them
        message = self._redact(message)[:_MAX_ERROR_CHARS]  # masked whole, then cut: no half secret is shown
        raise cls(
            f"{self.name}: HTTP {resp.status}: {message}",
            backend=self.name,
            status=resp.status,
            retry_after=retry_after_of(resp.headers),
            should_retry=should_retry_of(resp.headers),
        )

    async def _post(self, url: str, body: dict[str, Any]) -> bytes:
        """POST ``body``; the answer's bytes, or the upstream's error status as moa's exception."""
        async with self._get_session().post(url, json=body, headers=upstream_headers()) as resp:
            await self._raise_for_status(resp)
            return await resp.read()

    async def generate(
        self, messages: list[Message], params: SamplingParams, n: int = 1, *, model: str | None = None
    ) -> GenerateResult:
        model = model or self.config.model
        messages, fitted = self._fitted(messages)
        async with self.templates.layout(model or "", messages) as layout:
            while True:
                body = self._body(layout.messages, params, n=n, model=model, stream=False)
                try:
                    with self._mapped_errors():
                        raw = await self._post(self._url, body)
                except BackendError as e:
                    if self.templates.retry(model or "", layout, e):
                        continue
                    raise
                self.templates.accepted(model or "", layout)
                break
        try:
            data = parse_body(ChatCompletion, raw)
        except ValidationError as e:
            raise self._malformed(e) from None
        if not data.choices:
            raise MalformedResponseError(f"{self.name}: malformed response: choices: empty", backend=self.name)
        upstream_response(data.model, data.id, self._redact)
        choices = sorted(data.choices, key=lambda c: c.index)
        generations = [
            Generation(
                text=c.message.content or "",
                finish_reason=c.finish_reason,
                logprobs=_top_logprobs(c.logprobs),
                tool_calls=_tool_calls(c.message.tool_calls),
                sampled=_sampled(c.logprobs),
            )
            for c in choices
        ]
        usage = data.usage.to_usage() if data.usage is not None else Usage.of(0, 0)
        return GenerateResult(generations=generations, usage=usage, template=_notes(fitted, layout.note))

    async def stream(
        self, messages: list[Message], params: SamplingParams, *, model: str | None = None
    ) -> AsyncIterator[Delta]:
        model = model or self.config.model
        messages, fitted = self._fitted(messages)
        finish_reason: str | None = None
        usage: Usage | None = None
        pieces = 0
        with self._mapped_errors():
            async with self.templates.layout(model or "", messages) as layout:
                while True:
                    body = self._body(layout.messages, params, n=1, model=model, stream=True)
                    resp = await self._get_session().post(self._url, json=body, headers=upstream_headers())
                    try:
                        await self._raise_for_status(resp)
                    except BaseException as e:
                        resp.release()
                        if isinstance(e, BackendError) and self.templates.retry(model or "", layout, e):
                            continue
                        raise
                    self.templates.accepted(model or "", layout)
                    break
            async with resp:
                async for data in iter_sse_data(resp.content.iter_any()):
                    if data == "[DONE]":
                        break
                    if not data.strip():  # an event with an empty data line: nothing to read
                        continue
                    try:
                        chunk = parse_body(ChatCompletionChunk, data)
                    except ValidationError as e:
                        raise self._malformed(e, "chunk") from None
                    if chunk.error is not None:
                        err = chunk.error
                        msg = err if isinstance(err, str) else err.message or "(no message)"
                        raise ServerError(self._redact(f"{self.name}: error in stream: {msg}"), backend=self.name)
                    if pieces == 0:
                        upstream_response(chunk.model, chunk.id, self._redact)
                    if chunk.usage is not None:
                        usage = chunk.usage.to_usage()
                    for choice in chunk.choices or ():
                        content = choice.delta.content if choice.delta is not None else None
                        calls = _call_pieces(choice.delta.tool_calls if choice.delta is not None else None)
                        sampled = _sampled(choice.logprobs) or ()
                        if content or calls or sampled:
                            pieces += 1
                            alternatives = _top_logprobs(choice.logprobs) or ()
                            yield Delta(content=content or "", tool_calls=calls, sampled=sampled, logprobs=alternatives)
                        finish_reason = choice.finish_reason or finish_reason
                else:
                    if finish_reason is None:
                        raise APIConnectionError(f"{self.name}: stream ended before it finished", backend=self.name)
        if usage is None:  # the server reports none: count pieces, the closest thing we can see
            usage = Usage.of(0, pieces)
        yield Delta(finish_reason=finish_reason or "stop", usage=usage, template=_notes(fitted, layout.note))

    async def embed(self, texts: list[str], *, model: str | None = None) -> EmbeddingResult:
        """One POST to ``{base_url}/embeddings``: a vector per text, in order."""
        body = {"model": model or self.config.model, "input": texts}
        with self._mapped_errors():
            raw = await self._post(self._embeddings_url, body)
        try:
            data = parse_body(CreateEmbeddingResponse, raw)
        except ValidationError as e:
            raise self._malformed(e) from None
        rows = sorted(data.data, key=lambda d: d.index)
        if len(rows) != len(texts) or [r.index for r in rows] != list(range(len(texts))):
            got = [r.index for r in rows]
            raise MalformedResponseError(
                f"{self.name}: malformed response: data: {len(rows)} vectors (indices {got[:8]}) for "
                f"{len(texts)} inputs",
                backend=self.name,
            )
        if len({len(r.embedding) for r in rows}) > 1:
            raise MalformedResponseError(
                f"{self.name}: malformed response: data: vectors of different lengths", backend=self.name
            )
        prompt_tokens = data.usage.prompt_tokens if data.usage is not None else 0
        return EmbeddingResult([[float(x) for x in r.embedding] for r in rows], Usage.of(prompt_tokens, 0))

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


def _notes(*notes: str | None) -> str | None:
    """How a prompt was fitted, in words: the notes that say something, joined."""
    return "; ".join(n for n in notes if n) or None


def _secrets(api_key: str | None, headers: Mapping[str, str]) -> list[str]:
    """What to mask: the key, every configured header value, and each long word of one (``Bearer <key>``)."""
    secrets = [api_key or ""]
    for value in headers.values():
        secrets.append(value)
        secrets.extend(word for word in value.split() if len(word) >= MIN_FREE_LENGTH)
    return secrets


def _tool_calls(calls: list[MessageToolCall] | None) -> tuple[ToolCall, ...]:
    """An answer's tool calls, each id unique in it (the upstream's kept, one made where it sent none)."""
    return unique_ids(tuple(ToolCall(c.id or "", c.function.name, c.function.arguments) for c in calls or ()))


def _call_pieces(pieces: list[ToolCallPiece] | None) -> tuple[ToolCallDelta, ...]:
    """One chunk's pieces of tool calls, as sent."""
    return tuple(
        ToolCallDelta(
            p.index,
            p.id,
            p.function.name if p.function is not None else None,
            (p.function.arguments or "") if p.function is not None else "",
        )
        for p in pieces or ()
    )


def _top_logprobs(logprobs: ChoiceLogprobs | None) -> tuple[TopLogprobs, ...] | None:
    """A choice's ``logprobs.content`` as (token, logprob) pairs per position; ``None`` when the server sent none."""
    if logprobs is None or not logprobs.content:
        return None
    positions = []
    for position in logprobs.content:
        top = [(t.token, float(t.logprob)) for t in position.top_logprobs or ()]
        if all(token != position.token for token, _ in top):
            top.append((position.token, float(position.logprob)))
        positions.append(tuple(sorted(top, key=lambda t: -t[1])))
    return tuple(positions)


def _sampled(logprobs: ChoiceLogprobs | None) -> tuple[tuple[str, float], ...] | None:
    """A choice's sampled token and its logprob per position; ``None`` when the server sent no logprobs."""
    if logprobs is None or not logprobs.content:
        return None
    return tuple((p.token, float(p.logprob)) for p in logprobs.content)


def retry_after_of(headers: Mapping[str, str]) -> float | None:
    """Seconds the upstream asks us to wait, as sent (0, negative or a past date give <= 0; not clamped):
    ``retry-after-ms`` (milliseconds) first, as openai-python, else ``Retry-After`` (seconds or an HTTP date);
    ``None`` when absent or unreadable."""
    ms = _finite(headers.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000
    value = headers.get("retry-after")
    seconds = _finite(value)
    if seconds is not None or not value:
        return seconds
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:  # RFC 9110 dates are GMT
        when = when.replace(tzinfo=UTC)
    return when.timestamp() - time.time()


def should_retry_of(headers: Mapping[str, str]) -> bool | None:
    """The upstream's ``x-should-retry: true|false`` verdict; ``None`` when absent or neither."""
    value = (headers.get("x-should-retry") or "").strip().lower()
    return True if value == "true" else False if value == "false" else None


def _finite(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    return number if math.isfinite(number) else None


__all__ = ["OpenAIProposer", "retry_after_of", "should_retry_of"]
