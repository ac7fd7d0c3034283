"""A proposer for any OpenAI-compatible ``/chat/completions`` API, over one pooled aiohttp session."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from email.utils import parsedate_to_datetime
from typing import Any

import aiohttp

from moa.config import OpenAIBackendConfig
from moa.errors import (
    APIConnectionError,
    BackendError,
    ConfigError,
    ContextLengthError,
    ServerError,
    error_for_status,
)
from moa.types import Delta, GenerateResult, Generation, Message, SamplingParams, TopLogprobs, Usage
from proposers.sse import iter_sse_data

_CONTEXT_HINTS = ("context length", "context_length", "maximum context", "too long", "max_model_len")


class OpenAIProposer:
    """Speaks the OpenAI chat completions protocol; one aiohttp session per backend, made on first use."""

    def __init__(self, name: str, config: OpenAIBackendConfig) -> None:
        self.name = name
        self.config = config
        self.supports_n = config.supports_n
        self._url = f"{config.base_url}/chat/completions"
        self._api_key = self._read_key(name, config)
        self._session: aiohttp.ClientSession | None = None

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIProposer(name={self.name!r}, base_url={self.config.base_url!r})"

    @staticmethod
    def _read_key(name: str, config: OpenAIBackendConfig) -> str | None:
        if config.api_key_env is None:
            return None
        key = os.environ.get(config.api_key_env)
        if not key:
            raise ConfigError(f"environment variable {config.api_key_env} is not set", f"backends.{name}.api_key_env")
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
        self, messages: list[Message], params: SamplingParams, n: int, model: str | None, stream: bool
    ) -> dict[str, Any]:
        model = model or self.config.model
        body: dict[str, Any] = {"model": model, "messages": [m.to_dict() for m in messages]}
        if n != 1:
            body["n"] = n
        for key in ("temperature", "top_p", "max_tokens", "seed"):
            value = getattr(params, key)
            if value is not None:
                body[key] = value
        if params.stop:
            body["stop"] = list(params.stop)
        if params.logprobs is not None:
            body["logprobs"] = True
            body["top_logprobs"] = params.logprobs
        if stream:
            body["stream"] = True
            if self.config.stream_usage:
                body["stream_options"] = {"include_usage": True}
        return body

    def _redact(self, text: str) -> str:
        return text.replace(self._api_key, "***") if self._api_key else text

    @contextmanager
    def _mapped_errors(self) -> Iterator[None]:
        """Turn aiohttp's and the decoder's failures into moa's tree, in one place."""
        try:
            yield
        except BackendError:
            raise
        except (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError) as e:
            raise APIConnectionError(
                self._redact(f"{self.name}: connection failed: {type(e).__name__}: {e}"), backend=self.name
            ) from None
        except (json.JSONDecodeError, KeyError, TypeError, IndexError, UnicodeDecodeError) as e:
            raise ServerError(f"{self.name}: malformed response: {type(e).__name__}: {e}", backend=self.name) from None

    async def _raise_for_status(self, resp: aiohttp.ClientResponse) -> None:
        if resp.status < 400:
            return
        raw = await resp.text(errors="replace")
        try:
            message = json.loads(raw)["error"]["message"]
        except (ValueError, KeyError, TypeError):
            message = raw[:500] or resp.reason or ""
        message = self._redact(f"{self.name}: HTTP {resp.status}: {message}")
        retry_after = _parse_retry_after(resp.headers.get("Retry-After"))
        cls = error_for_status(resp.status)
        if resp.status == 400 and any(h in message.lower() for h in _CONTEXT_HINTS):
            cls = ContextLengthError
        raise cls(message, backend=self.name, status=resp.status, retry_after=retry_after)

    async def generate(
        self, messages: list[Message], params: SamplingParams, n: int = 1, *, model: str | None = None
    ) -> GenerateResult:
        body = self._body(messages, params, n, model, stream=False)
        with self._mapped_errors():
            async with self._get_session().post(self._url, json=body) as resp:
                await self._raise_for_status(resp)
                data = json.loads(await resp.read())
            choices = sorted(data["choices"], key=lambda c: c.get("index", 0))
            generations = [
                Generation(
                    text=(c["message"].get("content") or ""),
                    finish_reason=c.get("finish_reason"),
                    logprobs=_top_logprobs(c.get("logprobs")),
                )
                for c in choices
            ]
            usage = data.get("usage") or {}
            return GenerateResult(
                generations=generations,
                usage=Usage.of(usage.get("prompt_tokens") or 0, usage.get("completion_tokens") or 0),
            )

    async def stream(
        self, messages: list[Message], params: SamplingParams, *, model: str | None = None
    ) -> AsyncIterator[Delta]:
        body = self._body(messages, params, 1, model, stream=True)
        finish_reason: str | None = None
        usage: Usage | None = None
        pieces = 0
        with self._mapped_errors():
            async with self._get_session().post(self._url, json=body) as resp:
                await self._raise_for_status(resp)
                async for data in iter_sse_data(resp.content.iter_any()):
                    if data == "[DONE]":
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        err = chunk["error"]
                        msg = err.get("message", str(err)) if isinstance(err, dict) else str(err)
                        raise ServerError(self._redact(f"{self.name}: error in stream: {msg}"), backend=self.name)
                    if chunk.get("usage"):
                        u = chunk["usage"]
                        usage = Usage.of(u.get("prompt_tokens") or 0, u.get("completion_tokens") or 0)
                    for choice in chunk.get("choices") or []:
                        content = (choice.get("delta") or {}).get("content")
                        if content:
                            pieces += 1
                            yield Delta(content=content)
                        finish_reason = choice.get("finish_reason") or finish_reason
                else:
                    if finish_reason is None:
                        raise APIConnectionError(f"{self.name}: stream ended before it finished", backend=self.name)
        if usage is None:  # the server reports none: count pieces, the closest thing we can see
            usage = Usage.of(0, pieces)
        yield Delta(finish_reason=finish_reason or "stop", usage=usage)

    async def aclose(self) -> None:
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None


def _top_logprobs(logprobs: dict[str, Any] | None) -> tuple[TopLogprobs, ...] | None:
    """A choice's ``logprobs.content`` as (token, logprob) pairs per position; ``None`` when the server sent none."""
    if not logprobs or not logprobs.get("content"):
        return None
    positions = []
    for position in logprobs["content"]:
        top = [(t["token"], float(t["logprob"])) for t in position.get("top_logprobs") or []]
        if all(token != position["token"] for token, _ in top):
            top.append((position["token"], float(position["logprob"])))
        positions.append(tuple(sorted(top, key=lambda t: -t[1])))
    return tuple(positions)


def _parse_retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (seconds or an HTTP date); ``None`` when absent or unreadable."""
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


__all__ = ["OpenAIProposer"]
