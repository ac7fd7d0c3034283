"""Retries: one decision (``retry_delay``) for generate and stream, against a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import logging
import math
import time

import pytest

from moa import Ensemble
from moa.backend import retry_delay
from moa.config import RetryPolicy
from moa.errors import (
    APIConnectionError,
    BackendError,
    BadRequestError,
    ConflictError,
    InsufficientProposalsError,
    MalformedResponseError,
    RateLimitError,
    RequestTimeoutError,
    ServerError,
)
from tests.support.ensembles import moa_config
from tests.support.scripted_server import Raw, ScriptedServer

USER = [{"role": "user", "content": "What is 2 + 2?"}]
POLICY = RetryPolicy(max_retries=3, initial_backoff_s=1.0, max_backoff_s=8.0, max_retry_after_s=60.0)


# ---- the decision --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("err", "retried"),
    [
        (RequestTimeoutError("x", status=408), True),
        (ConflictError("x", status=409), True),
        (RateLimitError("x", status=429), True),
        (ServerError("x", status=503), True),
        (MalformedResponseError("x"), True),
        (APIConnectionError("x"), True),
        (BadRequestError("x", status=400), False),
        (ServerError("x", status=500, should_retry=False), False),  # x-should-retry: false wins
        (BadRequestError("x", status=400, should_retry=True), True),  # and so does x-should-retry: true
    ],
)
def test_retry_is_decided_by_the_class_unless_the_upstream_says_otherwise(err: BackendError, retried: bool) -> None:
    assert (retry_delay(POLICY, err, 0, math.inf) is not None) is retried


@pytest.mark.parametrize("retry_after", [0.0, -3.0])
def test_a_zero_or_negative_retry_after_backs_off_exponentially(retry_after: float) -> None:
    err = RateLimitError("x", status=429, retry_after=retry_after)
    for n in range(3):
        delay = retry_delay(POLICY, err, n, math.inf)
        assert delay is not None and 0.75 * min(2**n, 8) <= delay <= min(2**n, 8)


def test_retry_after_is_honoured_within_limits() -> None:
    assert retry_delay(POLICY, RateLimitError("x", retry_after=2.5), 0, math.inf) == 2.5
    assert retry_delay(POLICY, RateLimitError("x", retry_after=61), 0, math.inf) is None  # beyond max_retry_after_s
    assert retry_delay(POLICY, RateLimitError("x", retry_after=2.5), 0, 2.0) is None  # beyond the deadline
    assert retry_delay(POLICY, ServerError("x"), 3, math.inf) is None  # max_retries used up
    assert retry_delay(POLICY, ServerError("x"), 0, 0.5) is None  # even the backoff would outlast the deadline


# ---- through the engine ---------------------------------------------------------------------------------


def _cfg(upstream: ScriptedServer, layer: list[str], **retry: float) -> dict[str, object]:
    return moa_config(upstream.base_url, [layer], backend={"retry": {"max_retries": 2, **retry}})


async def test_retry_after_zero_is_not_a_retry_storm(upstream: ScriptedServer) -> None:
    upstream.script("a", answer="ok", faults=["429:0", "429:0"])
    async with Ensemble.from_config(_cfg(upstream, ["a"], initial_backoff_s=0.2)) as ens:
        await ens.acomplete(USER)
    first, second, third = upstream.for_model("a")
    assert second.started - first.ended >= 0.2 * 0.75 - 0.01
    assert third.started - second.ended >= 0.4 * 0.75 - 0.01


async def test_retry_after_beyond_max_retry_after_fails_now(upstream: ScriptedServer) -> None:
    upstream.script("a", faults=["429:30"])
    upstream.script("b", answer="fine")
    async with Ensemble.from_config(_cfg(upstream, ["a", "b"], initial_backoff_s=0.01, max_retry_after_s=5)) as ens:
        started = time.monotonic()
        result = await asyncio.wait_for(ens.acomplete(USER), timeout=5)
    assert time.monotonic() - started < 2
    assert len(upstream.for_model("a")) == 1
    record = next(r for r in result.trace if r.agent == "a")
    assert record.outcome == "error" and "HTTP 429" in (record.error or "") and record.retries == 0


async def test_retry_after_beyond_the_deadline_fails_now_with_the_upstream_error(upstream: ScriptedServer) -> None:
    upstream.script("a", faults=["429:5"])
    async with Ensemble.from_config(_cfg(upstream, ["a"])) as ens:
        started = time.monotonic()
        with pytest.raises(InsufficientProposalsError) as info:
            await asyncio.wait_for(ens.acomplete(USER, deadline_s=2), timeout=5)
    assert time.monotonic() - started < 1.5
    assert "HTTP 429" in info.value.failures["a"]
    assert len(upstream.for_model("a")) == 1


async def test_no_backoff_outlasts_the_deadline(upstream: ScriptedServer) -> None:
    upstream.script("a", faults=["500"])
    async with Ensemble.from_config(_cfg(upstream, ["a"], initial_backoff_s=5)) as ens:
        started = time.monotonic()
        with pytest.raises(InsufficientProposalsError) as info:
            await asyncio.wait_for(ens.acomplete(USER, deadline_s=2), timeout=5)
    assert time.monotonic() - started < 1.5
    assert "HTTP 500" in info.value.failures["a"]


async def test_a_streamed_call_uses_the_same_decision(upstream: ScriptedServer) -> None:
    upstream.script("a", answer="p")
    upstream.script("agg", answer="streamed after backoff", faults=["429:0"])
    async with Ensemble.from_config(_cfg(upstream, ["a"], initial_backoff_s=0.2)) as ens:
        text = "".join([d.content async for d in ens.astream(USER)])
    assert text == "streamed after backoff"
    first, second = upstream.for_model("agg")
    assert second.started - first.ended >= 0.2 * 0.75 - 0.01


async def test_a_streamed_call_with_a_retry_after_beyond_the_limit_fails_now(upstream: ScriptedServer) -> None:
    upstream.script("a", answer="p")
    upstream.script("agg", faults=["429:30"])
    async with Ensemble.from_config(_cfg(upstream, ["a"], initial_backoff_s=0.01, max_retry_after_s=5)) as ens:
        with pytest.raises(RateLimitError):
            await asyncio.wait_for(_drain(ens), timeout=5)
    assert len(upstream.for_model("agg")) == 1


async def _drain(ens: Ensemble) -> str:
    return "".join([d.content async for d in ens.astream(USER)])


async def test_an_answer_without_choices_is_malformed_and_retried(upstream: ScriptedServer) -> None:
    empty = Raw(json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "a", "choices": []}))
    upstream.script("a", answer="second time lucky", faults=[empty])
    async with Ensemble.from_config(_cfg(upstream, ["a"], initial_backoff_s=0.01)) as ens:
        result = await ens.acomplete(USER)
    assert [r.outcome for r in upstream.for_model("a")] == ["raw 200", "ok"]
    assert [p.text for p in result.proposals] == ["second time lucky"]
    assert next(r for r in result.trace if r.agent == "a").retries == 1


async def test_each_retry_is_logged_with_status_and_delay_and_no_secret(
    upstream: ScriptedServer, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("MOA_TEST_RETRY_KEY", "sk-test-secret-123")
    upstream.script("a", answer="ok", faults=["429:0.05", "401-echo"])
    cfg = moa_config(
        upstream.base_url, [["a", "b"]],
        backend={"api_key_env": "MOA_TEST_RETRY_KEY", "retry": {"max_retries": 2, "initial_backoff_s": 0.01}},
    )  # fmt: skip
    with caplog.at_level(logging.DEBUG, logger="moa.backend"):
        async with Ensemble.from_config(cfg) as ens:
            await ens.acomplete(USER)
    retries = [r.getMessage() for r in caplog.records if r.name == "moa.backend" and "retry" in r.getMessage()]
    assert len(retries) == 1  # the 401 (which quoted the key) is not retried
    assert "429" in retries[0] and "0.050 s" in retries[0]
    assert all("sk-test-secret-123" not in r.getMessage() for r in caplog.records)


async def test_retry_after_ms_and_x_should_retry_reach_the_decision(upstream: ScriptedServer) -> None:
    """The headers the proposer reads decide the engine's retries: retry-after-ms is waited for (over a
    Retry-After that says otherwise), and x-should-retry: false stops a 503 from being retried at all."""
    slow_ms = Raw('{"error": {"message": "busy"}}', status=429, headers={"retry-after-ms": "300", "Retry-After": "0"})
    final = Raw('{"error": {"message": "gone"}}', status=503, headers={"x-should-retry": "false"})
    upstream.script("a", answer="after 300 ms", faults=[slow_ms])
    upstream.script("b", faults=[final])
    async with Ensemble.from_config(_cfg(upstream, ["a", "b"], initial_backoff_s=0.01)) as ens:
        result = await ens.acomplete(USER)
    first, second = upstream.for_model("a")
    assert second.started - first.ended >= 0.3 - 0.01
    assert len(upstream.for_model("b")) == 1
    record = next(r for r in result.trace if r.agent == "b")
    assert record.outcome == "error" and record.retries == 0
