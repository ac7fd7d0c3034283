"""``moa serve`` reports what an answer cost (usage, headers, /metrics) and keeps budgets (402), through the
official openai client and raw HTTP against a real server process."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.support.scripted_server import ScriptedServer
from tests.support.server_harness import ServeProcess, ensemble, metric_samples, moa_serve

USER = [{"role": "user", "content": "What is 2 + 2?"}]
#: USD per million tokens; cached prompt tokens at a tenth of the input price
PRICES = {"input_per_mtok": 3.0, "output_per_mtok": 15.0, "cached_input_per_mtok": 0.3}
#: $1 a completion token, prompts free: a proposer's worst case is $10 (max_tokens 10), the aggregator's $20
DOLLAR_A_TOKEN = {"input_per_mtok": 0.0, "output_per_mtok": 1_000_000.0}


def _budgeted(url: str, name: str, models: list[str], agg: str, max_cost_usd: float) -> dict[str, Any]:
    config = ensemble(url, name, [models], agg, backend={"prices": DOLLAR_A_TOKEN}, max_cost_usd=max_cost_usd)
    for agent in config["layers"][0]["agents"]:
        agent["max_tokens"] = 10
    config["aggregator"]["max_tokens"] = 20
    return config


@pytest.fixture(scope="module")
def serve(upstream_sync_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    configs = [
        ensemble(upstream_sync_url, "priced", [["cp1", "cp2"]], "cagg", backend={"prices": PRICES}),
        ensemble(upstream_sync_url, "unpriced", [["up1"]], "uagg"),
        _budgeted(upstream_sync_url, "budget25", ["b1", "b2", "b3"], "bagg", 25),
        _budgeted(upstream_sync_url, "budget15", ["c1", "c2", "c3"], "cbagg", 15),
        _budgeted(upstream_sync_url, "budget30", ["d1"], "dagg", 30),
    ]
    with moa_serve(tmp_path_factory.mktemp("serve-cost"), configs) as server:
        yield server


@pytest.fixture
def client(serve: ServeProcess) -> Iterator[openai.OpenAI]:
    with serve.client(timeout=30) as c:
        yield c


def _script_priced(upstream: ScriptedServer) -> float:
    """Scripts the priced ensemble's models; returns what its request costs."""
    upstream.script("cp1", answer="four").cached_tokens = 4
    upstream.script("cp2", answer="four it is").cached_tokens = 8
    upstream.script("cagg", answer="it is four")  # no cached tokens reported
    prompt, cached, completion = 30, 12, 1 + 3 + 3
    return ((prompt - cached) * 3.0 + cached * 0.3 + completion * 15.0) / 1e6


def test_usage_and_headers_carry_cached_tokens_and_cost(client: openai.OpenAI, upstream_thread: ScriptedServer) -> None:
    expected = _script_priced(upstream_thread)
    raw = client.chat.completions.with_raw_response.create(model="priced", messages=USER)
    result = raw.parse()
    assert result.usage is not None and result.usage.prompt_tokens_details is not None
    assert result.usage.prompt_tokens_details.cached_tokens == 12
    assert (result.usage.model_extra or {})["cost"] == pytest.approx(expected)
    assert float(raw.headers["x-moa-cost-usd"]) == pytest.approx(expected)
    assert raw.headers["x-moa-total-tokens"] == str(result.usage.total_tokens) == "37"


def test_the_streamed_usage_chunk_carries_cached_tokens_and_cost(
    client: openai.OpenAI, upstream_thread: ScriptedServer
) -> None:
    expected = _script_priced(upstream_thread)
    chunks = list(
        client.chat.completions.create(
            model="priced", messages=USER, stream=True, stream_options={"include_usage": True}
        )
    )
    usage = chunks[-1].usage
    assert chunks[-1].choices == [] and usage is not None and usage.prompt_tokens_details is not None
    assert usage.prompt_tokens_details.cached_tokens == 12
    assert (usage.model_extra or {})["cost"] == pytest.approx(expected)


def test_without_prices_there_is_no_cost_header(client: openai.OpenAI, upstream_thread: ScriptedServer) -> None:
    upstream_thread.script("up1", answer="four")
    upstream_thread.script("uagg", answer="four")
    raw = client.chat.completions.with_raw_response.create(model="unpriced", messages=USER)
    usage = raw.parse().usage
    assert "x-moa-cost-usd" not in raw.headers and raw.headers["x-moa-total-tokens"] == "22"
    assert usage is not None and "cost" not in (usage.model_extra or {})


def test_metrics_count_cost_and_tokens_by_kind(
    serve: ServeProcess, client: openai.OpenAI, upstream_thread: ScriptedServer
) -> None:
    def samples() -> dict[str, float]:
        return metric_samples(serve.request("GET", "/metrics")[2].decode())

    before = samples()
    expected = _script_priced(upstream_thread)
    client.chat.completions.create(model="priced", messages=USER)
    after = samples()

    def grew(key: str) -> float:
        return after.get(key, 0.0) - before.get(key, 0.0)

    labels = 'backend="up",ensemble="priced"'
    cost = sum(grew(f'moa_cost_usd_total{{{labels},model="{m}"}}') for m in ("cp1", "cp2", "cagg"))
    assert cost == pytest.approx(expected)
    assert grew(f'moa_tokens_total{{{labels},kind="cached",model="cp2"}}') == 8
    assert grew(f'moa_tokens_total{{{labels},kind="prompt",model="cagg"}}') == 10
    assert grew(f'moa_tokens_total{{{labels},kind="completion",model="cp2"}}') == 3


def _script_budgeted(upstream: ScriptedServer, models: list[str], agg: str) -> None:
    for m in models:
        upstream.script(m, answer=f"{m} says")
    upstream.script(agg, answer="final answer")


def test_a_budget_runs_the_proposers_that_fit(client: openai.OpenAI, upstream_thread: ScriptedServer) -> None:
    _script_budgeted(upstream_thread, ["b1", "b2", "b3"], "bagg")
    result = client.chat.completions.create(model="budget25", messages=USER, extra_body={"moa_trace": True})
    assert result.choices[0].message.content == "final answer"
    assert upstream_thread.for_model("b3") == []
    calls = (result.model_extra or {})["moa_trace"][0]["calls"]
    assert [(c["agent"], c["outcome"], c["reason"]) for c in calls if c["outcome"] == "skipped"] == [
        ("b3", "skipped", "budget")
    ]


def test_an_aggregator_over_the_budget_is_402(serve: ServeProcess, upstream_thread: ScriptedServer) -> None:
    _script_budgeted(upstream_thread, ["b1", "b2", "b3"], "bagg")
    body = {"model": "budget25", "messages": USER, "moa_max_cost_usd": 15}
    status, headers, raw = serve.post_json(body)
    error = json.loads(raw)["error"]
    assert status == 402 and error["code"] == "budget_exceeded"
    assert "$2 spent" in error["message"] and "$20" in error["message"]
    assert upstream_thread.for_model("bagg") == [] and len(upstream_thread.for_model("b1")) == 1


def test_a_streamed_request_over_the_budget_is_402(client: openai.OpenAI, upstream_thread: ScriptedServer) -> None:
    _script_budgeted(upstream_thread, ["c1", "c2", "c3"], "cbagg")
    with pytest.raises(openai.APIStatusError) as caught:
        list(client.chat.completions.create(model="budget15", messages=USER, stream=True))
    assert caught.value.status_code == 402 and upstream_thread.for_model("cbagg") == []


def test_a_client_cannot_raise_the_budget(serve: ServeProcess, upstream_thread: ScriptedServer) -> None:
    _script_budgeted(upstream_thread, ["c1", "c2", "c3"], "cbagg")
    status, _, raw = serve.post_json({"model": "budget15", "messages": USER, "moa_max_cost_usd": 1000})
    assert status == 402 and json.loads(raw)["error"]["code"] == "budget_exceeded"
    assert upstream_thread.for_model("cbagg") == []


def test_a_bad_budget_names_the_field(serve: ServeProcess) -> None:
    status, _, raw = serve.post_json({"model": "budget25", "messages": USER, "moa_max_cost_usd": -1})
    assert status == 400 and json.loads(raw)["error"]["param"] == "moa_max_cost_usd"


def test_n_choices_share_one_budget(serve: ServeProcess, upstream_thread: ScriptedServer) -> None:
    # one choice costs $30 (10 + 20 tokens at $1), the whole budget: two choices cannot both be made
    upstream_thread.script("d1", answer=" ".join(["w"] * 10))
    upstream_thread.script("dagg", answer=" ".join(["w"] * 20))
    status, _, raw = serve.post_json({"model": "budget30", "messages": USER, "n": 2})
    if status == 200:
        cost = json.loads(raw)["usage"]["cost"]
        assert cost <= 30, f"two choices spent ${cost} of a $30 budget"
    assert status == 402 and json.loads(raw)["error"]["code"] == "budget_exceeded"
    assert len(upstream_thread.for_model("dagg")) <= 1
