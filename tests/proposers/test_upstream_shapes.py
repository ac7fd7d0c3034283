"""Hostile upstreams: valid JSON of the wrong shape, and retry headers, through the real proposer and ensemble."""

from __future__ import annotations

import time
from email.utils import formatdate

import pytest

from moa import Ensemble
from moa.config import OpenAIBackendConfig
from moa.errors import BackendError, MalformedResponseError, RateLimitError, ServerError
from moa.types import Message, SamplingParams
from proposers.openai_http import OpenAIProposer
from tests.support.ensembles import moa_config
from tests.support.scripted_server import Raw, ScriptedServer

USER = [{"role": "user", "content": "hi"}]
HI = [Message("user", "hi")]


def _proposer(base_url: str) -> OpenAIProposer:
    return OpenAIProposer("up", OpenAIBackendConfig(type="openai", base_url=base_url, model="m"))


async def _generate(upstream: ScriptedServer, fault: Raw) -> BackendError:
    upstream.script("m", faults=[fault])
    proposer = _proposer(upstream.base_url)
    try:
        with pytest.raises(BackendError) as info:
            await proposer.generate(HI, SamplingParams())
    finally:
        await proposer.aclose()
    return info.value


async def _stream(upstream: ScriptedServer, events: str) -> MalformedResponseError:
    upstream.script("m", faults=[Raw(events, content_type="text/event-stream")])
    proposer = _proposer(upstream.base_url)
    try:
        with pytest.raises(MalformedResponseError) as info:
            [d async for d in proposer.stream(HI, SamplingParams())]
    finally:
        await proposer.aclose()
    return info.value


OK_MESSAGE = '{"message": {"content": "fine"}}'


@pytest.mark.parametrize(
    ("body", "names"),
    [
        ('{"choices": [{"message": null}]}', "choices[0].message"),
        ('{"choices": [{"message": "a string"}]}', "choices[0].message"),
        ('{"choices": []}', "choices: empty"),
        ('{"choices": [null]}', "choices[0]"),
        ('{"choices": ["x"]}', "choices[0]"),
        ('{"choices": "x"}', "choices"),
        ("{}", "choices"),
        ('["x"]', "body"),
        ('{"choices": [' + OK_MESSAGE + '], "usage": "n/a"}', "usage"),
        ('{"choices": [' + OK_MESSAGE + '], "usage": {"prompt_tokens": 1.5}}', "usage.prompt_tokens"),
        ('{"choices": [' + OK_MESSAGE + '], "usage": {"completion_tokens": -3}}', "usage.completion_tokens"),
        ('{"choices": [{"message": {"content": 42}}]}', "choices[0].message.content"),
        ('{"choices": [{"message": {"content": "x"}, "logprobs": {"content": [{"token": 1}]}}]}',
         "choices[0].logprobs.content[0].token"),
        ("not json", "body is not valid JSON"),
    ],
)  # fmt: skip
async def test_a_body_of_the_wrong_shape_is_a_malformed_response(
    upstream: ScriptedServer, body: str, names: str
) -> None:
    err = await _generate(upstream, Raw(body))
    assert type(err) is MalformedResponseError and err.retryable
    assert err.backend == "up"
    assert f"up: malformed response: {names}" in str(err)


@pytest.mark.parametrize(
    ("data", "names"),
    [
        ('["x"]', "chunk: Input should be an object"),
        ('"hello"', "chunk: Input should be an object"),
        ('{"choices": [{"delta": "x"}]}', "chunk.choices[0].delta"),
        ('{"choices": [null]}', "chunk.choices[0]"),
        ('{"choices": [], "usage": "x"}', "chunk.usage"),
        ('{"choices": [{"delta": {"content": 7}}]}', "chunk.choices[0].delta.content"),
        ("{broken", "chunk is not valid JSON"),
    ],
)
async def test_a_streamed_chunk_of_the_wrong_shape_is_a_malformed_response(
    upstream: ScriptedServer, data: str, names: str
) -> None:
    first = '{"choices": [{"index": 0, "delta": {"content": "ok"}}]}'
    err = await _stream(upstream, f"data: {first}\n\ndata: {data}\n\ndata: [DONE]\n\n")
    assert err.retryable and err.backend == "up"
    assert f"up: malformed response: {names}" in str(err)


async def test_a_good_body_with_null_index_and_usage_fields_still_reads(upstream: ScriptedServer) -> None:
    body = '{"choices": [{"index": null, "message": {"content": "fine"}}], "usage": {"prompt_tokens": null}}'
    upstream.script("m", faults=[Raw(body)])
    proposer = _proposer(upstream.base_url)
    try:
        result = await proposer.generate(HI, SamplingParams())
    finally:
        await proposer.aclose()
    assert result.generations[0].text == "fine" and result.usage.prompt_tokens == 0


async def test_one_wrong_shape_proposal_leaves_the_layer_going(upstream: ScriptedServer) -> None:
    upstream.script("a", faults=[Raw('{"choices": [{"message": null}]}')])
    upstream.script("b", answer="b is fine")
    upstream.script("agg", answer="the answer")
    cfg = moa_config(upstream.base_url, [["a", "b"]], backend={"retry": {"max_retries": 0}})
    async with Ensemble.from_config(cfg) as ens:
        result = await ens.acomplete(USER)
    assert result.choices[0].message.content == "the answer"
    assert [p.agent for p in result.proposals] == ["b"]
    record = next(r for r in result.trace if r.agent == "a")
    assert record.outcome == "error" and record.error is not None
    assert "up: malformed response: choices[0].message" in record.error


async def test_a_wrong_shape_is_retried_like_a_5xx(upstream: ScriptedServer) -> None:
    upstream.script("a", faults=[Raw('{"choices": []}')])
    upstream.script("agg", answer="the answer")
    cfg = moa_config(upstream.base_url, [["a"]], backend={"retry": {"max_retries": 1, "initial_backoff_s": 0}})
    async with Ensemble.from_config(cfg) as ens:
        result = await ens.acomplete(USER)
    record = next(r for r in result.trace if r.agent == "a")
    assert record.outcome == "ok" and record.retries == 1


async def test_an_aggregator_with_no_choices_is_a_malformed_response(upstream: ScriptedServer) -> None:
    upstream.script("agg", faults=[Raw('{"choices": []}')])
    cfg = moa_config(upstream.base_url, [["a"]], backend={"retry": {"max_retries": 0}})
    async with Ensemble.from_config(cfg) as ens:
        with pytest.raises(MalformedResponseError, match="choices: empty"):
            await ens.acomplete(USER)


# ---- retry headers -----------------------------------------------------------------------------------------


def _busy(headers: dict[str, str], status: int = 429) -> Raw:
    return Raw('{"error": {"message": "slow down"}}', status=status, headers=headers)


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, None),
        ({"Retry-After": "2"}, 2.0),
        ({"Retry-After": "0"}, 0.0),
        ({"Retry-After": "-3"}, -3.0),
        ({"Retry-After": "1.5"}, 1.5),
        ({"Retry-After": "soon"}, None),
        ({"Retry-After": "nan"}, None),
        ({"retry-after-ms": "250"}, 0.25),
        ({"retry-after-ms": "-100"}, -0.1),
        ({"retry-after-ms": "1500", "Retry-After": "9"}, 1.5),  # milliseconds win, as in openai-python
        ({"retry-after-ms": "x", "Retry-After": "9"}, 9.0),
    ],
)
async def test_retry_after_is_read_as_sent(
    upstream: ScriptedServer, headers: dict[str, str], expected: float | None
) -> None:
    err = await _generate(upstream, _busy(headers))
    assert isinstance(err, RateLimitError)
    assert err.retry_after == (pytest.approx(expected) if expected is not None else None)


async def test_retry_after_as_an_http_date(upstream: ScriptedServer) -> None:
    future = await _generate(upstream, _busy({"Retry-After": formatdate(time.time() + 30, usegmt=True)}))
    past = await _generate(upstream, _busy({"Retry-After": formatdate(time.time() - 30, usegmt=True)}))
    assert future.retry_after is not None and 25 < future.retry_after <= 31
    assert past.retry_after is not None and -35 < past.retry_after <= -25  # not clamped


@pytest.mark.parametrize(
    ("value", "expected"), [("true", True), ("false", False), ("TRUE", True), ("maybe", None), (None, None)]
)
async def test_x_should_retry_is_the_upstreams_verdict(
    upstream: ScriptedServer, value: str | None, expected: bool | None
) -> None:
    err = await _generate(upstream, _busy({} if value is None else {"x-should-retry": value}, status=503))
    assert isinstance(err, ServerError) and err.should_retry is expected


async def test_a_lone_surrogate_escape_is_text_not_a_malformed_body(upstream: ScriptedServer) -> None:
    """JSON allows the escape "\\ud83d" alone (a model cut mid-emoji); pydantic's own JSON parser refuses it."""
    whole = '{"choices": [{"message": {"content": "Seven \\ud83d"}}]}'
    events = 'data: {"choices": [{"delta": {"content": "Seven \\ud83d"}, "finish_reason": "stop"}]}\n\ndata: [DONE]\n\n'
    upstream.script("m", faults=[Raw(whole), Raw(events, content_type="text/event-stream")])
    proposer = _proposer(upstream.base_url)
    try:
        result = await proposer.generate(HI, SamplingParams())
        deltas = [d async for d in proposer.stream(HI, SamplingParams())]
    finally:
        await proposer.aclose()
    assert result.generations[0].text == "Seven \ud83d"
    assert "".join(d.content for d in deltas) == "Seven \ud83d"
