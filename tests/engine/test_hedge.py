"""Hedged calls: a slow call gets a second, identical one; the first answer wins (a real server on 127.0.0.1)."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import pytest

from moa import Ensemble
from moa.config import load_config
from moa.errors import BudgetExceededError, ConfigError
from moa.types import CallRecord
from tests.support.ensembles import moa_config, stream_text_and_trace
from tests.support.scripted_server import Recorded, ScriptedServer

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


# ---- issue 19: every lane's ending reaches the caller; losers keep their reason; first-token races ----------

#: $1 a completion token, prompts free: the aggregator's worst case is its max_tokens (20) in dollars
DOLLAR_A_TOKEN = {"input_per_mtok": 0.0, "output_per_mtok": 1_000_000.0}


async def test_a_hedged_stream_that_does_not_fit_the_budget_fails_at_once(upstream: ScriptedServer) -> None:
    upstream.script("a", answer="a says")
    upstream.script("agg", answer="never sent")
    cfg = moa_config(upstream.base_url, [["a"]], backend={"prices": DOLLAR_A_TOKEN}, max_cost_usd=15,
                     aggregator_extra={"max_tokens": 20, "hedge": {"after_s": 0.2, "max_extra": 1.0}})  # fmt: skip
    cfg["layers"][0]["agents"][0]["max_tokens"] = 10
    async with Ensemble.from_config(cfg) as ens:
        with pytest.raises(BudgetExceededError, match="aggregator"):
            await stream_text_and_trace(ens, USER)  # it hung: the refused lane never reached the caller
    assert upstream.for_model("agg") == []


@pytest.mark.parametrize("who", ["aggregator", "proposer n=2"])
async def test_a_hedge_that_loses_to_the_first_call_is_traced_hedge_lost(upstream: ScriptedServer, who: str) -> None:
    # every call takes 0.5 s; the hedge goes out at 0.2 s, so the first call answers first
    upstream.script("a", latency_s=0.5)
    upstream.script("agg", latency_s=0.5)
    hedge = {"after_s": 0.2, "max_extra": 1.0}
    cfg = moa_config(upstream.base_url, [["a"]])
    if who == "aggregator":
        cfg["aggregator"]["hedge"] = hedge
    else:
        cfg["layers"][0]["agents"][0].update(hedge=hedge, n=2)
    role = who.split()[0]
    async with Ensemble.from_config(cfg) as ens:
        result = await asyncio.wait_for(ens.acomplete(USER), timeout=5)
    records = sorted((r.hedge, r.outcome, r.reason) for r in result.trace if r.role == role)
    assert records == [(False, "ok", None), (True, "cancelled", "hedge lost")]


async def test_a_hedged_call_of_one_sample_is_a_joined_stream(upstream: ScriptedServer) -> None:
    upstream.script("a", answer="one two three")
    cfg = moa_config(upstream.base_url, [["a"]])
    cfg["layers"][0]["agents"][0]["hedge"] = {"after_s": 2.0, "max_extra": 1.0}
    async with Ensemble.from_config(cfg) as ens:
        result = await asyncio.wait_for(ens.acomplete(USER), timeout=5)
    [sent] = upstream.for_model("a")
    assert sent.body.get("stream") is True  # raced on its first token, not its last
    assert "one two three" in upstream.for_model("agg")[0].prompt_text
    [record] = [r for r in result.trace if r.agent == "a"]
    assert (record.outcome, record.prompt_tokens, record.completion_tokens) == ("ok", 10, 3)
    assert [p.text for p in result.proposals] == ["one two three"]


async def test_a_call_of_one_sample_is_hedged_at_its_first_token(upstream: ScriptedServer) -> None:
    # the first call sends its first token at once, then the rest slowly: it is not hedged
    upstream.script("a", answer=" ".join(["w"] * 20), latency_s=0.1)  # ~0.1 s to the first token, 0.01 s a word
    cfg = moa_config(upstream.base_url, [["a"]])
    cfg["layers"][0]["agents"][0]["hedge"] = {"after_s": 0.15, "max_extra": 1.0}
    async with Ensemble.from_config(cfg) as ens:
        result = await asyncio.wait_for(ens.acomplete(USER), timeout=5)
    assert [r.hedge for r in result.trace if r.agent == "a"] == [False]
    assert len(upstream.for_model("a")) == 1


async def test_after_quantile_starts_from_after_s(upstream: ScriptedServer) -> None:
    upstream.script("a", answer="hedged", faults=["hang"])
    cfg = moa_config(upstream.base_url, [["a"]])
    policy = {"after_s": 0.1, "after_quantile": 0.9, "min_samples": 20, "max_extra": 0.1}
    cfg["layers"][0]["agents"][0]["hedge"] = policy
    async with Ensemble.from_config(cfg) as ens:  # the very first call: no latencies seen, the first of 10 calls
        result = await asyncio.wait_for(ens.acomplete(USER), timeout=5)
    assert sorted((r.hedge, r.outcome) for r in result.trace if r.agent == "a") == [(False, "cancelled"), (True, "ok")]
    assert [p.text for p in result.proposals] == ["hedged"]
