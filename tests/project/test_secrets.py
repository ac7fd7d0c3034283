"""Secrets (the API key, every configured header value) never reach an error, a trace or what the SDK returns."""

from __future__ import annotations

import json
from typing import Any

import pytest

from moa import Ensemble
from moa.config import OpenAIBackendConfig
from moa.errors import AuthenticationError, BackendError, ContextLengthError, InsufficientProposalsError, ServerError
from moa.redact import Redactor
from moa.types import Message, SamplingParams
from proposers.openai_http import OpenAIProposer
from tests.support.ensembles import moa_config
from tests.support.scripted_server import Raw, ScriptedServer

USER = [{"role": "user", "content": "hi"}]
AZURE = "sk-azure-SECRET-123"


def _error(message: str, status: int) -> Raw:
    return Raw(json.dumps({"error": {"message": message, "type": "x"}}), status=status)


async def _raised(config: OpenAIBackendConfig, expected: type[BackendError], *, stream: bool = False) -> Any:
    """The error one call of a real proposer on ``config`` raises (a ``pytest.ExceptionInfo``)."""
    proposer = OpenAIProposer("up", config)
    try:
        with pytest.raises(expected) as info:
            if stream:
                [d async for d in proposer.stream([Message("user", "hi")], SamplingParams())]
            else:
                await proposer.generate([Message("user", "hi")], SamplingParams())
    finally:
        await proposer.aclose()
    return info


def test_long_secrets_are_masked_anywhere_short_ones_as_whole_tokens() -> None:
    redact = Redactor(["1", "sk-long-secret-value", "", None])
    assert redact("from 127.0.0.1 with key 1") == "from 127.0.0.1 with key ***"
    assert redact("1") == "***" and redact("(1)") == "(***)" and redact("key=1;") == "key=***;"
    assert redact("x-sk-long-secret-value-y and Bearersk-long-secret-value") == "x-***-y and Bearer***"
    assert redact("a1 1b 1.5 v1-2") == "a1 1b 1.5 v1-2"
    assert "1" not in repr(redact) and "sk-long" not in repr(redact)
    assert Redactor([]).__call__("127.0.0.1") == "127.0.0.1" and not Redactor([None, ""])


def test_the_longer_of_overlapping_secrets_wins() -> None:
    assert Redactor(["abc", "abcdefghij"])("abcdefghij abc") == "*** ***"


async def test_a_header_secret_echoed_by_the_upstream_is_masked_everywhere(
    upstream: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_KEY", AZURE)
    upstream.script("a", faults=[_error(f"invalid api-key {AZURE}", 401)])
    upstream.script("b", answer="fine")
    upstream.script("agg", answer="the answer")
    cfg = moa_config(upstream.base_url, [["a", "b"]], backend={"headers": {"api-key": "${AZURE_KEY}"}})
    async with Ensemble.from_config(cfg) as ens:
        result = await ens.acomplete(USER)
    assert upstream.for_model("a")[0].headers["api-key"] == AZURE  # it was sent
    record = next(r for r in result.trace if r.agent == "a")
    assert record.error == "up: HTTP 401: invalid api-key ***"
    assert AZURE not in str(result) and AZURE not in result.model_dump_json() and AZURE not in repr(result)


async def test_a_header_secret_in_an_error_that_fails_the_request_is_masked(
    upstream: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AZURE_KEY", AZURE)
    upstream.script("a", faults=[_error(f"invalid api-key {AZURE}", 401)])
    cfg = moa_config(upstream.base_url, [["a"]], backend={"headers": {"api-key": "${AZURE_KEY}"}})
    async with Ensemble.from_config(cfg) as ens:
        with pytest.raises(InsufficientProposalsError) as info:
            await ens.acomplete(USER)
    assert "invalid api-key ***" in str(info.value)
    assert AZURE not in str(info.value) and AZURE not in repr(info.value.failures)
    assert info.value.trace is not None and all(AZURE not in (r.error or "") for r in info.value.trace)


async def test_a_bearer_header_value_and_its_token_are_masked(upstream: ScriptedServer) -> None:
    token = "tok-0123456789"
    upstream.script("m", faults=[_error(f"bad Authorization 'Bearer {token}' (token {token})", 403)])
    config = OpenAIBackendConfig(
        type="openai", base_url=upstream.base_url, model="m", headers={"X-Auth": f"Bearer {token}"}
    )
    info = await _raised(config, BackendError, stream=False)
    assert str(info.value) == "up: HTTP 403: bad Authorization '***' (token ***)"


async def test_a_secret_in_an_error_sent_mid_stream_is_masked(upstream: ScriptedServer) -> None:
    events = f'data: {{"error": {{"message": "key {AZURE} revoked"}}}}\n\n'
    upstream.script("m", faults=[Raw(events, content_type="text/event-stream")])
    config = OpenAIBackendConfig(type="openai", base_url=upstream.base_url, model="m", headers={"api-key": AZURE})
    info = await _raised(config, ServerError, stream=True)
    assert str(info.value) == "up: error in stream: key *** revoked"


async def test_a_short_key_does_not_mangle_the_message(
    upstream: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOA_SHORT_KEY", "1")
    upstream.script("m", faults=[_error("key 1 refused by 127.0.0.1:8000", 401)])
    config = OpenAIBackendConfig(type="openai", base_url=upstream.base_url, model="m", api_key_env="MOA_SHORT_KEY")
    info = await _raised(config, AuthenticationError, stream=False)
    assert str(info.value) == "up: HTTP 401: key *** refused by 127.0.0.1:8000"


async def test_context_length_is_recognised_before_the_key_is_masked(
    upstream: ScriptedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOA_WORD_KEY", "context")
    upstream.script("m", faults=[_error("This model's maximum context length is 2048 tokens.", 400)])
    config = OpenAIBackendConfig(type="openai", base_url=upstream.base_url, model="m", api_key_env="MOA_WORD_KEY")
    info = await _raised(config, ContextLengthError, stream=False)
    assert "context" not in str(info.value) and "maximum *** length" in str(info.value)


async def test_a_secret_across_the_cut_of_a_long_error_body_is_not_half_shown(upstream: ScriptedServer) -> None:
    body = "x" * 490 + f" {AZURE} " + "y" * 100  # not JSON: the text itself, cut to 500 characters
    upstream.script("m", faults=[Raw(body, status=502, content_type="text/plain")])
    config = OpenAIBackendConfig(type="openai", base_url=upstream.base_url, model="m", headers={"api-key": AZURE})
    info = await _raised(config, ServerError, stream=False)
    assert "sk-azure" not in str(info.value) and str(info.value).endswith(" *** " + "y" * 5)
