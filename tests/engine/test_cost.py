"""Accounting and budgets through the SDK, against the scripted server: cached tokens, dollars, max_cost_usd."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from moa import Ensemble
from moa.alpaca_eval.generate import GenerateOptions, checkpoint_path, generate
from moa.config import parse_config
from moa.errors import BudgetExceededError, ConfigError
from moa.types import CallRecord
from tests.support.ensembles import moa_config
from tests.support.scripted_server import ScriptedServer

QUESTION = [{"role": "user", "content": "what is two plus two?"}]

#: USD per million tokens: input $2, cached input $0.5, output $10; the aggregator's model costs more
PRICES = {
    "input_per_mtok": 2.0, "output_per_mtok": 10.0, "cached_input_per_mtok": 0.5,
    "models": {"agg": {"input_per_mtok": 4.0, "output_per_mtok": 20.0}},
}  # fmt: skip


def _cost(prompt: int, cached: int, completion: int, inp: float, cached_in: float, out: float) -> float:
    return ((prompt - cached) * inp + cached * cached_in + completion * out) / 1e6


async def test_cached_tokens_and_cost_sum_over_a_request(upstream: ScriptedServer) -> None:
    upstream.script("p1", answer="four").cached_tokens = 6  # 10 prompt tokens, 6 of them cached
    upstream.script("p2", answer="four it is")  # reports no cached tokens at all
    upstream.script("agg", answer="the answer is four").cached_tokens = 3
    config = moa_config(upstream.base_url, [["p1", "p2"]], backend={"prices": PRICES})
    async with Ensemble.from_config(config) as ens:
        result = await ens.acomplete(QUESTION)
    by = {r.agent: r for r in result.trace}
    assert [by[a].cached_prompt_tokens for a in ("p1", "p2", "aggregator")] == [6, 0, 3]
    assert by["p1"].cost_usd == pytest.approx(_cost(10, 6, 1, 2.0, 0.5, 10.0))
    assert by["p2"].cost_usd == pytest.approx(_cost(10, 0, 3, 2.0, 0.5, 10.0))
    # a per-model price without a cached price charges cached tokens at its input price
    assert by["aggregator"].cost_usd == pytest.approx(_cost(10, 3, 4, 4.0, 4.0, 20.0))
    assert result.usage.prompt_tokens_details is not None and result.usage.prompt_tokens_details.cached_tokens == 9
    assert result.usage.cost == pytest.approx(sum(r.cost_usd or 0 for r in result.trace))
    assert (result.usage.prompt_tokens, result.usage.completion_tokens) == (30, 8)


async def test_a_stream_ends_with_cached_tokens_and_cost(upstream: ScriptedServer) -> None:
    upstream.script("p1", answer="four")
    upstream.script("agg", answer="four it is").cached_tokens = 7
    config = moa_config(upstream.base_url, [["p1"]], backend={"prices": PRICES})
    async with Ensemble.from_config(config) as ens:
        deltas = [d async for d in ens.astream(QUESTION)]
    last = deltas[-1]
    assert last.usage is not None and last.trace is not None
    [agg] = [r for r in last.trace if r.role == "aggregator"]
    assert agg.cached_prompt_tokens == 7 and agg.cost_usd == pytest.approx(_cost(10, 7, 3, 4.0, 4.0, 20.0))
    assert last.usage.cached_prompt_tokens == 7
    assert last.usage.cost == pytest.approx(agg.cost_usd + _cost(10, 0, 1, 2.0, 0.5, 10.0))


async def test_without_prices_there_is_no_cost(upstream: ScriptedServer) -> None:
    upstream.script("p1", answer="four").cached_tokens = 2
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        result = await ens.acomplete(QUESTION)
    assert all(r.cost_usd is None for r in result.trace) and result.usage.cost is None
    assert result.usage.cached_prompt_tokens == 2


async def test_defense_embedding_calls_are_priced(upstream: ScriptedServer) -> None:
    for model in ("a", "b", "c"):
        upstream.script(model, answer="paris is the capital")
    upstream.script("agg", answer="paris")
    emb_prices = {"input_per_mtok": 0.1, "output_per_mtok": 0.0}
    defense = {
        "type": "cluster-filter",
        "embeddings": {"type": "openai", "base_url": upstream.base_url, "model": "emb", "prices": emb_prices},
    }
    config = moa_config(upstream.base_url, [["a", "b", "c"]], defense=defense, backend={"prices": PRICES})
    async with Ensemble.from_config(config) as ens:
        result = await ens.acomplete([{"role": "user", "content": "capital of France?"}])
    [embed] = [r for r in result.trace if r.step == "embed"]
    assert embed.prompt_tokens == 12 and embed.cost_usd == pytest.approx(12 * 0.1 / 1e6)
    assert result.usage.cost == pytest.approx(sum(r.cost_usd or 0 for r in result.trace))


# ---- budgets ---------------------------------------------------------------------------------------------

#: $1 a completion token, prompts free: a proposer call's worst case is its max_tokens (10) in dollars, the
#: aggregator's 20; each scripted answer is 2 tokens, so each call made costs $2
DOLLAR_A_TOKEN = {"input_per_mtok": 0.0, "output_per_mtok": 1_000_000.0}


def _budgeted(upstream: ScriptedServer, **extra: Any) -> dict[str, Any]:
    for model in ("p1", "p2", "p3"):
        upstream.script(model, answer=f"{model} says")
    upstream.script("agg", answer="final answer")
    config = moa_config(upstream.base_url, [["p1", "p2", "p3"]], backend={"prices": DOLLAR_A_TOKEN}, **extra)
    for agent in config["layers"][0]["agents"]:
        agent["max_tokens"] = 10
    config["aggregator"]["max_tokens"] = 20
    return config


def _skipped(trace: list[CallRecord]) -> list[str]:
    return [r.agent for r in trace if r.outcome == "skipped" and r.reason == "budget"]


async def test_a_budget_runs_the_proposers_that_fit_and_skips_the_rest(upstream: ScriptedServer) -> None:
    # p1 and p2 hold $10 each; p3's $10 would pass $25; then $4 spent + the aggregator's $20 fits
    async with Ensemble.from_config(_budgeted(upstream, max_cost_usd=25)) as ens:
        result = await ens.acomplete(QUESTION)
    assert result.text == "final answer"
    assert upstream.for_model("p3") == [] and len(upstream.for_model("p1")) == len(upstream.for_model("p2")) == 1
    assert _skipped(result.trace) == ["p3"]
    assert [p.agent for p in result.proposals] == ["p1", "p2"]
    assert result.usage.cost == pytest.approx(6.0)  # three calls made, 2 tokens each


async def test_an_aggregator_that_cannot_fit_fails_the_request_naming_the_spend(upstream: ScriptedServer) -> None:
    # a request lowers the budget to $15: p1 holds $10, p2 and p3 are skipped; $2 spent + $20 > $15
    async with Ensemble.from_config(_budgeted(upstream, max_cost_usd=25)) as ens:
        with pytest.raises(BudgetExceededError) as caught:
            await ens.acomplete(QUESTION, max_cost_usd=15)
    err = caught.value
    assert (err.limit_usd, err.spent_usd, err.needed_usd) == (15, pytest.approx(2.0), pytest.approx(20.0))
    assert "$2 spent" in str(err) and "aggregator" in str(err) and "$20" in str(err)
    assert err.trace is not None and _skipped(err.trace) == ["p2", "p3", "aggregator"]
    assert upstream.for_model("agg") == []


async def test_a_request_cannot_raise_the_budget(upstream: ScriptedServer) -> None:
    async with Ensemble.from_config(_budgeted(upstream, max_cost_usd=15)) as ens:
        with pytest.raises(BudgetExceededError) as caught:
            await ens.acomplete(QUESTION, max_cost_usd=1000)
    assert caught.value.limit_usd == 15 and upstream.for_model("agg") == []


async def test_a_layer_that_cannot_reach_min_proposals_within_budget_fails(upstream: ScriptedServer) -> None:
    async with Ensemble.from_config(_budgeted(upstream, max_cost_usd=15, min_proposals=2)) as ens:
        with pytest.raises(BudgetExceededError, match="proposer p2"):
            await ens.acomplete(QUESTION)
    assert upstream.for_model("agg") == []


def test_a_budget_needs_prices_and_max_tokens(upstream: ScriptedServer) -> None:
    config = _budgeted(upstream, max_cost_usd=1)
    del config["backends"]["up"]["prices"]
    with pytest.raises(ConfigError, match=r"backends\.up\.prices: required when max_cost_usd is set"):
        parse_config(config)
    config = _budgeted(upstream, max_cost_usd=1)
    del config["aggregator"]["max_tokens"]
    with pytest.raises(ConfigError, match=r"aggregator\.max_tokens: required when max_cost_usd is set"):
        parse_config(config)


def test_bad_prices_name_the_field(upstream: ScriptedServer) -> None:
    config = moa_config(upstream.base_url, [["p1"]], backend={"prices": {"input_per_mtok": -1, "output_per_mtok": 1}})
    with pytest.raises(ConfigError, match=r"backends\.up\.prices\.input_per_mtok: must be >= 0"):
        parse_config(config)
    config = moa_config(upstream.base_url, [["p1"]], backend={"prices": {"input_per_mtok": 1}})
    with pytest.raises(ConfigError, match=r"backends\.up\.prices\.output_per_mtok: field required"):
        parse_config(config)


async def test_a_request_budget_on_an_ensemble_without_prices_is_refused(upstream: ScriptedServer) -> None:
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        with pytest.raises(ConfigError, match=r"^max_cost_usd: .*backends\.up\.prices"):
            await ens.acomplete(QUESTION, max_cost_usd=1)
    assert upstream.requests == []


# ---- alpaca-eval generate --------------------------------------------------------------------------------


async def test_generate_reports_cost_in_progress_and_summary(upstream: ScriptedServer, tmp_path: Path) -> None:
    upstream.script("p1", answer="four")
    upstream.script("agg", answer="four it is")
    instructions = tmp_path / "instructions.json"
    instructions.write_text(json.dumps([{"instruction": f"question {i}", "dataset": "test"} for i in range(3)]))
    config = moa_config(upstream.base_url, [["p1"]], backend={"prices": PRICES})
    progress = io.StringIO()
    options = GenerateOptions(config, tmp_path / "out.json", instructions=instructions, concurrency=1)
    report = await generate(options, progress)
    per_answer = _cost(10, 0, 1, 2.0, 0.5, 10.0) + _cost(10, 0, 3, 4.0, 4.0, 20.0)
    assert report.cost_usd == pytest.approx(3 * per_answer)
    assert f"${3 * per_answer:.4f}" in progress.getvalue().splitlines()[-1]


def test_generate_estimate_prints_the_worst_case_and_runs_nothing(
    upstream_thread: ScriptedServer, tmp_path: Path
) -> None:
    config = moa_config(upstream_thread.base_url, [["p1", "p2"]], backend={"prices": DOLLAR_A_TOKEN})
    for agent in config["layers"][0]["agents"]:
        agent["max_tokens"] = 10
    config["aggregator"]["max_tokens"] = 20
    config_path = tmp_path / "config.yaml"
    config_path.write_text(yaml.safe_dump(config))
    instructions = tmp_path / "instructions.json"
    instructions.write_text(json.dumps([{"instruction": f"question {i}", "dataset": "test"} for i in range(4)]))
    out = tmp_path / "out.json"
    done = subprocess.run(
        [sys.executable, "-m", "moa.cli", "alpaca-eval", "generate", "-c", str(config_path), "-o", str(out),
         "--instructions", str(instructions), "--estimate"],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    # 4 instructions x 3 calls; completions at most 10 + 10 + 20 tokens each, at $1 a token (prompts free)
    assert "4 instruction(s): 12 calls" in done.stdout and "160 completion" in done.stdout
    assert "at most $160.0000" in done.stdout
    assert upstream_thread.requests == [] and not out.exists() and not checkpoint_path(out).exists()


# ---- issue 19: budgets hold under dense tokenizers and streams without usage ----------------------------------

#: $1 a prompt token, completions free
DOLLAR_A_PROMPT_TOKEN = {"input_per_mtok": 1_000_000.0, "output_per_mtok": 0.0}


async def test_a_dense_prompt_cannot_overspend_the_budget(upstream: ScriptedServer) -> None:
    question = [{"role": "user", "content": "漢" * 300}]  # 300 characters, 900 UTF-8 bytes
    upstream.script("p1", answer="four").usage_prompt = 300  # a tokenizer counting one token a character
    upstream.script("agg", answer="four").usage_prompt = 300
    config = moa_config(upstream.base_url, [["p1"]], backend={"prices": DOLLAR_A_PROMPT_TOKEN}, max_cost_usd=250)
    config["layers"][0]["agents"][0]["max_tokens"] = 10
    config["aggregator"]["max_tokens"] = 10
    async with Ensemble.from_config(config) as ens:
        with pytest.raises(BudgetExceededError) as caught:
            await ens.acomplete(question)
    trace = caught.value.trace or []
    assert sum(r.cost_usd or 0 for r in trace) <= 250  # it spent $300 holding 4 characters a token
    assert upstream.for_model("p1") == []


async def test_a_stream_without_upstream_usage_is_charged_at_least_its_whole_cost(upstream: ScriptedServer) -> None:
    upstream.script("p1", answer="four")
    upstream.script("agg", answer="four it is")
    config = moa_config(upstream.base_url, [["p1"]], backend={"prices": PRICES, "stream_usage": False})
    async with Ensemble.from_config(config) as ens:
        whole = await ens.acomplete(QUESTION)
        deltas = [d async for d in ens.astream(QUESTION)]
    [whole_agg] = [r for r in whole.trace if r.role == "aggregator"]
    trace = deltas[-1].trace or []
    [streamed] = [r for r in trace if r.role == "aggregator"]
    assert whole_agg.prompt_tokens == 10  # the upstream's usage, reported on whole calls
    assert streamed.prompt_tokens >= 10 and streamed.completion_tokens >= 3  # none reported: charged its bound
    assert (streamed.cost_usd or 0) >= (whole_agg.cost_usd or 0) > 0
