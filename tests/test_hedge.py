"""Hedged calls: a slow call gets a second, identical one; the first answer wins (a real server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from moa import Ensemble
from moa.config import load_config
from moa.errors import ConfigError
from moa.types import CallRecord
from tests.conftest import moa_config, stream_text_and_trace
from tests.scripted_server import Recorded, ScriptedServer

USER = [{"role": "user", "content": "What is 2 + 2?"}]


async def _settled(upstream: ScriptedServer, model: str, count: int) -> list[Recorded]:
    """``model``'s requests once ``count`` of them have an outcome (a cancellation reaches the server later)."""
    for _ in range(200):
        recs = upstream.for_model(model)
        if len(recs) >= count and all(r.outcome != "running" for r in recs):
            return recs
        await asyncio.sleep(0.01)
    return upstream.for_model(model)


def _agg_records(trace: list[CallRecord]) -> list[CallRecord]:
    return [r for r in trace if r.role == "aggregator"]


async def test_a_hedge_fires_after_the_delay_and_the_winner_is_the_answer(upstream: ScriptedServer) -> None:
    upstream.script("a")
    upstream.script("agg", answer="hedged final", faults=["hang"])  # the first call never answers
    cfg = moa_config(upstream.base_url, [["a"]], backend={"hedge": {"after_s": 0.3, "max_extra": 1.0}})
    async with Ensemble.from_config(cfg) as ens:
        started = time.monotonic()
        result = await asyncio.wait_for(ens.acomplete(USER), timeout=5)
        elapsed = time.monotonic() - started
    assert result.text == "hedged final"
    assert 0.3 <= elapsed < 3
    first, second = await _settled(upstream, "agg", 2)
    assert second.started - first.started >= 0.3  # the hedge went out after the delay, not at once
    assert (first.outcome, second.outcome) == ("cancelled", "ok")  # the loser's connection was closed
    loser, winner = sorted(_agg_records(result.trace), key=lambda r: r.hedge)
    assert (loser.hedge, loser.outcome, loser.reason) == (False, "cancelled", "hedge lost")
    assert (winner.hedge, winner.outcome, winner.reason) == (True, "ok", None)
    assert [r.hedge for r in result.trace if r.agent == "a"] == [False]  # a fast call is not hedged


async def test_a_streamed_call_is_hedged_until_its_first_piece(upstream: ScriptedServer) -> None:
    upstream.script("a")
    upstream.script("agg", answer="streamed hedged final", faults=["hang"])
    cfg = moa_config(upstream.base_url, [["a"]], aggregator_extra={"hedge": {"after_s": 0.2, "max_extra": 1.0}})
    async with Ensemble.from_config(cfg) as ens:
        text, trace = await stream_text_and_trace(ens, USER)
    assert text == "streamed hedged final"
    first, second = await _settled(upstream, "agg", 2)
    assert (first.outcome, second.outcome) == ("cancelled", "ok")
    assert sorted((r.hedge, r.outcome, r.reason) for r in _agg_records(trace)) == [
        (False, "cancelled", "hedge lost"),
        (True, "ok", None),
    ]
    assert [r.hedge for r in trace if r.agent == "a"] == [False]  # the hedge was the aggregator's alone


async def test_a_call_that_answers_within_the_delay_is_not_hedged(upstream: ScriptedServer) -> None:
    upstream.script("a", latency_s=0.05)
    cfg = moa_config(upstream.base_url, [["a"]], backend={"hedge": {"after_s": 1.0, "max_extra": 1.0}})
    async with Ensemble.from_config(cfg) as ens:
        result = await ens.acomplete(USER)
    assert len(upstream.requests) == 2 and len(result.trace) == 2
    assert not any(r.hedge for r in result.trace)


async def test_both_calls_carry_the_seed(upstream: ScriptedServer) -> None:
    upstream.script("a")
    upstream.script("agg", faults=["hang"])
    cfg = moa_config(
        upstream.base_url, [["a"]], aggregator_extra={"seed": 7, "hedge": {"after_s": 0.1, "max_extra": 1.0}}
    )
    async with Ensemble.from_config(cfg) as ens:
        await asyncio.wait_for(ens.acomplete(USER), timeout=5)
    assert [r.body.get("seed") for r in upstream.for_model("agg")] == [7, 7]


async def test_max_extra_caps_the_share_of_calls_hedged(upstream: ScriptedServer) -> None:
    upstream.script("a", latency_s=0.15)  # every call is slower than the delay
    cfg = moa_config(upstream.base_url, [["a"]])
    cfg["layers"][0]["agents"][0]["hedge"] = {"after_s": 0.05, "max_extra": 0.25}
    traces = []
    async with Ensemble.from_config(cfg) as ens:
        for _ in range(8):
            traces.append((await asyncio.wait_for(ens.acomplete(USER), timeout=5)).trace)
    hedges = [r for trace in traces for r in trace if r.agent == "a" and r.hedge]
    assert len(hedges) == 2  # a quarter of 8 calls
    assert len(upstream.for_model("a")) == 10
    assert not any(r.hedge for trace in traces for r in trace if r.role == "aggregator")  # per agent, not backend


async def test_after_quantile_hedges_once_enough_latencies_are_seen(upstream: ScriptedServer) -> None:
    upstream.script("a", latency_s=0.05)
    cfg = moa_config(upstream.base_url, [["a"]])
    cfg["layers"][0]["agents"][0]["hedge"] = {"after_quantile": 0.9, "min_samples": 5, "max_extra": 1.0}
    async with Ensemble.from_config(cfg) as ens:
        for _ in range(5):  # the latencies it learns from; none is hedged (too few samples, then fast enough)
            result = await ens.acomplete(USER)
            assert not any(r.hedge for r in result.trace)
        upstream.scripts["a"].faults.append("hang")
        started = time.monotonic()
        result = await asyncio.wait_for(ens.acomplete(USER), timeout=5)
        assert time.monotonic() - started < 3
    assert sorted((r.hedge, r.outcome) for r in result.trace if r.agent == "a") == [(False, "cancelled"), (True, "ok")]


async def test_both_calls_count_against_the_backends_limits(upstream: ScriptedServer) -> None:
    # one call in flight at most: the hedge waits for the slot the hung first call holds until its timeout
    upstream.script("a", answer="late but right", faults=["hang"])
    cfg = moa_config(upstream.base_url, [["a"]])
    cfg["backends"]["up"].update(rate_limit={"concurrency": 1}, timeout_s=0.5, retry={"max_retries": 0})
    cfg["layers"][0]["agents"][0]["hedge"] = {"after_s": 0.1, "max_extra": 1.0}
    async with Ensemble.from_config(cfg) as ens:
        result = await asyncio.wait_for(ens.acomplete(USER), timeout=5)
    first, second = await _settled(upstream, "a", 2)
    assert second.started >= (first.ended or 0)  # never two in flight
    assert upstream.peak_in_flight == 1
    records = sorted((r.hedge, r.outcome) for r in result.trace if r.agent == "a")
    assert records == [(False, "error"), (True, "ok")]  # the first timed out; the hedge answered
    assert "late but right" in upstream.for_model("agg")[0].prompt_text


async def test_when_both_calls_fail_the_first_calls_error_is_raised(upstream: ScriptedServer) -> None:
    upstream.script("a", faults=["hang", "400"])
    upstream.script("b")
    cfg = moa_config(upstream.base_url, [["a", "b"]], backend={"timeout_s": 0.5, "retry": {"max_retries": 0}})
    cfg["layers"][0]["agents"][0]["hedge"] = {"after_s": 0.1, "max_extra": 1.0}
    async with Ensemble.from_config(cfg) as ens:
        result = await asyncio.wait_for(ens.acomplete(USER), timeout=5)
    failed = sorted((r.hedge, r.outcome, r.error or "") for r in result.trace if r.agent == "a")
    assert [(h, o) for h, o, _ in failed] == [(False, "error"), (True, "error")]
    assert "no answer within 0.5 s" in failed[0][2]


@pytest.mark.parametrize(
    ("hedge", "where", "message"),
    [
        ({}, "backends.up.hedge.after_s", "give after_s, after_quantile or both"),
        ({"after_s": -1, "after_quantile": 0.9}, "backends.up.hedge.after_s", "must be > 0"),
        ({"after_quantile": 1.0}, "backends.up.hedge.after_quantile", "must be < 1"),
        ({"after_s": 0}, "backends.up.hedge.after_s", "must be > 0"),
        ({"after_s": 1, "max_extra": 2}, "backends.up.hedge.max_extra", "must be <= 1"),
        ({"after_quantile": 0.9, "min_samples": 0}, "backends.up.hedge.min_samples", "must be >= 1"),
    ],
)
def test_hedge_is_validated_at_load_naming_the_field(hedge: dict[str, Any], where: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(moa_config("http://127.0.0.1:1/v1", [["a"]], backend={"hedge": hedge}))
    assert info.value.path == where
    assert message in str(info.value)


def test_hedging_is_off_by_default() -> None:
    config = load_config(moa_config("http://127.0.0.1:1/v1", [["a"]]))
    assert config.backends["up"].hedge is None
    assert config.layers[0].agents[0].hedge is None and config.aggregator.hedge is None
