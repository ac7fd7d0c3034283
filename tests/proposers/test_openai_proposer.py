"""The OpenAI-compatible HTTP proposer against a real local server."""

from __future__ import annotations

import asyncio

import pytest
from aiohttp import web

from moa import Ensemble
from moa.config import OpenAIBackendConfig
from moa.errors import (
    APIConnectionError,
    AuthenticationError,
    ConfigError,
    ContextLengthError,
    InsufficientProposalsError,
)
from moa.types import Message, SamplingParams
from proposers.openai_http import OpenAIProposer
from proposers.sse import iter_sse_data
from tests.support.ensembles import moa_config
from tests.support.scripted_server import ScriptedServer

USER = [{"role": "user", "content": "hi"}]
SECRET = "sk-test-0123456789abcdef"


def _proposer(base_url: str, **fields) -> OpenAIProposer:
    return OpenAIProposer("up", OpenAIBackendConfig(type="openai", base_url=base_url, model="m", **fields))


async def test_generate_sends_sampling_and_reads_n_choices(upstream: ScriptedServer) -> None:
    upstream.script("m", answer=lambda model, msgs, i: f"choice {i}")
    proposer = _proposer(upstream.base_url)
    params = SamplingParams(temperature=0.3, top_p=0.9, max_tokens=7, stop=("END",), seed=5)
    try:
        result = await proposer.generate([Message("user", "hi")], params, n=3)
    finally:
        await proposer.aclose()
    assert [g.text for g in result.generations] == ["choice 0", "choice 1", "choice 2"]
    body = upstream.requests[0].body
    assert body == {
        "model": "m", "messages": [{"role": "user", "content": "hi"}], "n": 3, "temperature": 0.3,
        "top_p": 0.9, "max_tokens": 7, "seed": 5, "stop": ["END"],
    }  # fmt: skip
    assert result.usage.completion_tokens == 6


async def test_api_key_is_sent_but_never_shown(upstream: ScriptedServer, monkeypatch) -> None:
    monkeypatch.setenv("MOA_TEST_KEY", SECRET)
    upstream.script("a", faults=["401-echo"])
    upstream.script("b", answer="fine")
    cfg = moa_config(upstream.base_url, [["a", "b"]], backend={"api_key_env": "MOA_TEST_KEY"})
    async with Ensemble.from_config(cfg) as ens:
        assert SECRET not in repr(ens._engine.backends["up"].proposer)
        result = await ens.acomplete(USER)
    assert upstream.requests[0].headers["Authorization"] == f"Bearer {SECRET}"
    record = next(r for r in result.trace if r.agent == "a")
    assert "invalid key: Bearer ***" in record.error
    assert SECRET not in result.model_dump_json()


async def test_authentication_error_is_typed_and_not_retried(upstream: ScriptedServer) -> None:
    upstream.script("m", faults=["401"])
    proposer = _proposer(upstream.base_url)
    try:
        with pytest.raises(AuthenticationError) as info:
            await proposer.generate([Message("user", "hi")], SamplingParams())
    finally:
        await proposer.aclose()
    assert info.value.status == 401 and not info.value.retryable


def test_missing_key_variable_names_the_field(monkeypatch) -> None:
    monkeypatch.delenv("MOA_TEST_ABSENT", raising=False)
    cfg = moa_config("http://127.0.0.1:9/v1", [["a"]], backend={"api_key_env": "MOA_TEST_ABSENT"})
    with pytest.raises(
        ConfigError, match=r"backends\.up\.api_key_env: environment variable MOA_TEST_ABSENT is not set"
    ):
        Ensemble.from_config(cfg)


async def test_connection_refused_is_a_connection_error() -> None:
    proposer = _proposer("http://127.0.0.1:9/v1")  # nothing listens on port 9
    try:
        with pytest.raises(APIConnectionError):
            await proposer.generate([Message("user", "hi")], SamplingParams())
    finally:
        await proposer.aclose()


async def _serve(handler) -> tuple[web.AppRunner, str]:
    app = web.Application()
    app.router.add_post("/v1/chat/completions", handler)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    return runner, f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/v1"


async def test_context_length_errors_are_recognised() -> None:
    async def handler(request: web.Request) -> web.Response:
        message = "This model's maximum context length is 2048 tokens. However, you requested 4000 tokens."
        return web.json_response({"error": {"message": message, "type": "invalid_request_error"}}, status=400)

    runner, url = await _serve(handler)
    proposer = _proposer(url)
    try:
        with pytest.raises(ContextLengthError, match="maximum context length"):
            await proposer.generate([Message("user", "hi")], SamplingParams())
    finally:
        await proposer.aclose()
        await runner.cleanup()


async def test_stream_cut_before_finishing_is_a_connection_error() -> None:
    async def handler(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        await resp.write(b'data: {"choices": [{"index": 0, "delta": {"content": "half"}}]}\n\n')
        return resp  # ends without finish_reason or [DONE]

    runner, url = await _serve(handler)
    proposer = _proposer(url)
    try:
        with pytest.raises(APIConnectionError, match="stream ended"):
            [d async for d in proposer.stream([Message("user", "hi")], SamplingParams())]
    finally:
        await proposer.aclose()
        await runner.cleanup()


async def test_sse_parser_handles_comments_multiline_and_crlf() -> None:
    raw = [b": keep-alive\n", b"data: one\r\n", b"data: two\n", b"\n", b"event: x\n", b"data:three\n", b"\n"]

    async def lines():
        for line in raw:
            yield line

    assert [d async for d in iter_sse_data(lines())] == ["one\ntwo", "three"]


async def test_sse_parser_handles_events_cut_anywhere() -> None:
    stream = b'data: {"a": 1}\n\ndata: {"b": 2}\r\n\r\n: ping\n\ndata: [DONE]\n\n'
    for size in (1, 3, 7, len(stream)):

        async def chunks(size: int = size):
            for i in range(0, len(stream), size):
                yield stream[i : i + size]

        assert [d async for d in iter_sse_data(chunks())] == ['{"a": 1}', '{"b": 2}', "[DONE]"]


async def test_all_agents_failing_names_them(upstream: ScriptedServer) -> None:
    upstream.script("a", faults=["403"])
    async with Ensemble.from_config(moa_config(upstream.base_url, [["a"]])) as ens:
        with pytest.raises(InsufficientProposalsError, match="a: up: HTTP 403"):
            await ens.acomplete(USER)
    await asyncio.sleep(0)
