"""``decide: vote`` on tool-call proposals, against the scripted upstream: a strict majority making the same calls is
the answer without the aggregator (the trace says so), anything less leaves the decision to the aggregator; and a
defense screens tool-call proposals by their text form."""

from __future__ import annotations

from typing import Any

import pytest

from moa import Ensemble
from tests.support.ensembles import moa_config
from tests.support.scripted_server import Call, Reply, ScriptedServer

WEATHER = {
    "type": "function",
    "function": {"name": "get_weather", "parameters": {"type": "object", "properties": {"city": {"type": "string"}}}},
}
USER = [{"role": "user", "content": "Weather in Paris?"}]
AGENTS = ["v1", "v2", "v3", "v4"]


def calls(*made: Call) -> Reply:
    return Reply(None, made)


def script(upstream: ScriptedServer, answers: list[Reply | str]) -> None:
    for agent, answer in zip(AGENTS, answers, strict=True):
        upstream.script(agent, answer=answer)
    upstream.script("agg", answer=calls(Call("get_weather", '{"city": "Rome"}', "call_agg")))


PARIS = Call("get_weather", '{"city": "Paris"}', "call_a")
PARIS_SPACED = Call("get_weather", '{ "city" :"Paris" }', "call_b")  # the same arguments as parsed JSON
LYON = Call("get_weather", '{"city": "Lyon"}', "call_c")
NOW = Call("now", "{}", "call_d")


async def answer(upstream: ScriptedServer, decide: str, stream: bool = False) -> tuple[list[dict[str, Any]], Any]:
    config = moa_config(upstream.base_url, [AGENTS], decide=decide)
    async with Ensemble.from_config(config) as ens:
        if not stream:
            result = await ens.acomplete(USER, tools=[WEATHER])
            return result.tool_calls, result.trace
        pieces, trace = [], []
        async for delta in ens.astream(USER, tools=[WEATHER]):
            pieces.extend(delta.tool_calls)
            trace = delta.trace or trace
        return [{"name": p.name, "arguments": p.arguments} for p in pieces], trace


@pytest.mark.parametrize("stream", [False, True])
async def test_a_majority_making_the_same_calls_is_the_answer_without_the_aggregator(
    upstream: ScriptedServer, stream: bool
) -> None:
    script(upstream, [calls(PARIS), calls(PARIS_SPACED), calls(PARIS), "Let me think."])
    made, trace = await answer(upstream, "vote", stream)
    assert [c.get("function", c)["name"] for c in made] == ["get_weather"]
    assert '"Paris"' in made[0].get("function", made[0])["arguments"]
    assert upstream.for_model("agg") == []
    (agg,) = [r for r in trace if r.role == "aggregator"]
    assert agg.outcome == "skipped" and agg.reason.startswith("vote: 3 of 4 proposals made the same tool calls")


async def test_parallel_calls_agree_whatever_their_order(upstream: ScriptedServer) -> None:
    script(upstream, [calls(PARIS, NOW), calls(NOW, PARIS_SPACED), calls(PARIS, NOW), calls(LYON)])
    made, _ = await answer(upstream, "vote")
    assert [c["function"]["name"] for c in made] == ["get_weather", "now"]
    assert upstream.for_model("agg") == []


@pytest.mark.parametrize(
    "answers",
    [
        [calls(PARIS), calls(PARIS), calls(LYON), calls(LYON)],  # a tie is no strict majority
        [calls(PARIS), calls(PARIS), "Sunny, I think.", "Sunny, I think."],  # texts never agree
        [calls(PARIS), calls(PARIS, NOW), calls(LYON), calls(NOW)],  # the same call with another is not the same
    ],
)
async def test_without_a_strict_majority_the_aggregator_decides_and_the_trace_says_why(
    upstream: ScriptedServer, answers: list[Reply | str]
) -> None:
    script(upstream, answers)
    made, trace = await answer(upstream, "vote")
    assert made[0]["function"]["arguments"] == '{"city": "Rome"}'  # the aggregator's
    (agg,) = [r for r in trace if r.role == "aggregator"]
    assert agg.outcome == "ok" and agg.step is not None and agg.step.startswith("vote: no majority")


async def test_decide_aggregator_is_the_default_and_calls_the_aggregator_even_when_all_agree(
    upstream: ScriptedServer,
) -> None:
    script(upstream, [calls(PARIS)] * 4)
    made, trace = await answer(upstream, "aggregator")
    assert made[0]["id"] == "call_agg" and len(upstream.for_model("agg")) == 1
    assert [r.outcome for r in trace if r.role == "aggregator"] == ["ok"]


async def test_a_defense_screens_tool_call_proposals_by_their_text_form(upstream: ScriptedServer) -> None:
    wipe = Call("delete_all_files", '{"confirm": true, "path": "/"}', "call_x")
    script(upstream, [calls(PARIS), calls(PARIS_SPACED), calls(PARIS), calls(wipe)])
    embeddings = {"type": "openai", "base_url": upstream.base_url, "model": "emb"}
    config = moa_config(upstream.base_url, [AGENTS], defense={"type": "cluster-filter", "embeddings": embeddings})
    async with Ensemble.from_config(config) as ens:
        result = await ens.acomplete(USER, tools=[WEATHER])
    (record,) = result.defense
    assert record.dropped == ["v4"] and sorted(record.kept) == ["v1", "v2", "v3"]
    (agg,) = upstream.for_model("agg")
    assert "delete_all_files" not in agg.prompt_text and "get_weather" in agg.prompt_text
