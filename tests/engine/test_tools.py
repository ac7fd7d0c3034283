"""Tools through the ensemble (SDK), against the scripted upstream: every proposer and the aggregator get the tools
and the tool-call history (names kept), tool-call proposals are kept and written out as the call, and the
aggregator's calls are the answer, whole and streamed."""

from __future__ import annotations

import json
from typing import Any

import pytest

from moa import Ensemble
from moa.errors import ConfigError, UnsupportedFieldError
from moa.tools import ToolCallDelta, calls_of
from tests.support.ensembles import moa_config
from tests.support.scripted_server import Call, Reply, ScriptedServer

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
USER = [{"role": "user", "content": "Weather in Paris?", "name": "alice"}]
HISTORY = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Weather in Paris?", "name": "alice"},
    {
        "role": "assistant",
        "content": None,
        "tool_calls": [
            {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city":"Paris"}'}}
        ],
    },
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny, 21C"},
]
PARIS = '{"city": "Paris"}'


async def test_every_proposer_and_the_aggregator_receive_the_tools_the_history_and_the_names(
    upstream: ScriptedServer,
) -> None:
    upstream.script("agg", answer="It is sunny in Paris.")
    config = moa_config(upstream.base_url, [["p1", "p2"], ["p3"]])
    async with Ensemble.from_config(config) as ens:
        result = await ens.acomplete(HISTORY, tools=[WEATHER], tool_choice="auto", parallel_tool_calls=False)
    assert result.text == "It is sunny in Paris."
    assert sorted(r.model for r in upstream.requests) == ["agg", "p1", "p2", "p3"]
    for rec in upstream.requests:
        assert rec.body["tools"] == [WEATHER], rec.model
        assert rec.body["tool_choice"] == "auto"
        assert rec.body["parallel_tool_calls"] is False
        sent = rec.messages
        assert {"role": "user", "content": "Weather in Paris?", "name": "alice"} in sent, rec.model
        call = next(m for m in sent if m.get("tool_calls"))
        assert call["content"] is None
        assert call["tool_calls"][0]["function"] == {"name": "get_weather", "arguments": '{"city":"Paris"}'}
        assert {"role": "tool", "content": "sunny, 21C", "tool_call_id": "call_1"} in sent
        assert sent[-1]["role"] in ("tool", "system")  # the conversation goes on from the tool's result


async def test_tool_call_proposals_are_kept_and_written_out_as_the_call(upstream: ScriptedServer) -> None:
    upstream.script("p1", answer=Reply(None, (Call("get_weather", PARIS, "call_p1"),)))
    upstream.script("p2", answer="Let me check the weather.")
    upstream.script("agg", answer=Reply(None, (Call("get_weather", PARIS, "call_agg"),)))
    config = moa_config(upstream.base_url, [["p1", "p2"], ["p3"]])
    async with Ensemble.from_config(config) as ens:
        result = await ens.acomplete(USER, tools=[WEATHER])
    layer1 = {p.agent: p for p in result.proposals if p.layer == 1}
    assert layer1["p1"].text == f"[tool call] get_weather({PARIS})"
    assert not layer1["p1"].dropped
    assert all(r.outcome == "ok" for r in result.trace)
    layer2 = upstream.for_model("p3")[0].prompt_text
    assert f"get_weather({PARIS})" in layer2 and "Let me check the weather." in layer2
    assert f"get_weather({PARIS})" not in upstream.for_model("agg")[0].prompt_text  # it reads layer 2
    choice = result.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    assert result.tool_calls == [
        {"id": "call_agg", "type": "function", "function": {"name": "get_weather", "arguments": PARIS}}
    ]


async def test_the_aggregators_calls_stream_in_openai_pieces_with_unique_ids(upstream: ScriptedServer) -> None:
    calls = (Call("get_weather", PARIS, "dup"), Call("get_weather", '{"city": "Lyon"}', "dup"), Call("now", "{}", None))
    upstream.script("agg", answer=Reply("Checking.", calls))
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        pieces: list[ToolCallDelta] = []
        text, finish = "", None
        async for delta in ens.astream(USER, tools=[WEATHER]):
            text += delta.content
            pieces.extend(delta.tool_calls)
            finish = delta.finish_reason or finish
        whole = await ens.acomplete(USER, tools=[WEATHER])
    assert text == "Checking." and finish == "tool_calls"
    assert sum(1 for p in pieces if p.id is not None) == 3  # an id in each call's first piece only
    made = calls_of(pieces)
    assert [(c.name, json.loads(c.arguments)) for c in made] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Lyon"}),
        ("now", {}),
    ]
    assert made[0].id == "dup" and len({c.id for c in made}) == 3
    ids = [c["id"] for c in whole.tool_calls]
    assert ids[0] == "dup" and len(set(ids)) == 3
    assert whole.text == "Checking."


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"tools": [{"type": "function", "function": {"name": "bad name"}}]}, "tools[0].function.name"),
        ({"tool_choice": "required"}, "tool_choice"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "function": {"name": "nope"}}}, "tool_choice"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].function.name"),
        ({"tools": [WEATHER], "tool_choice": "sometimes"}, "tool_choice"),
    ],
)
async def test_bad_tools_are_refused_naming_the_field(
    upstream: ScriptedServer, overrides: dict[str, Any], field: str
) -> None:
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        with pytest.raises(ConfigError) as e:
            await ens.acomplete(USER, **overrides)
    assert field in str(e.value)
    assert not upstream.requests


@pytest.mark.parametrize(
    ("message", "field"),
    [
        ({"role": "tool", "content": "x"}, "tool_call_id"),
        ({"role": "user", "content": None}, "content"),
        (
            {"role": "user", "content": "x", "tool_calls": [{"id": "a", "function": {"name": "f", "arguments": ""}}]},
            "tool_calls",
        ),
    ],
)
async def test_bad_tool_history_is_refused_naming_the_field(
    upstream: ScriptedServer, message: dict[str, Any], field: str
) -> None:
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        with pytest.raises(ConfigError) as e:
            await ens.acomplete([{"role": "user", "content": "hi"}, message, {"role": "user", "content": "go"}])
    assert "messages[1]" in str(e.value) and field in str(e.value)


@pytest.mark.parametrize("where", ["aggregator", "proposer"])
async def test_the_torch_backend_refuses_tools_naming_itself(upstream: ScriptedServer, where: str) -> None:
    config = moa_config(upstream.base_url, [["p1"]])
    config["backends"]["tiny"] = {"type": "torch", "model": "embedded:smollm2-135m-instruct"}
    if where == "aggregator":
        config["aggregator"] = {"backend": "tiny"}
    else:
        config["layers"][0]["agents"].append({"backend": "tiny"})
    async with Ensemble.from_config(config) as ens:
        with pytest.raises(UnsupportedFieldError) as info:
            await ens.acomplete(USER, tools=[WEATHER])
        assert (info.value.field, info.value.backend) == ("tools", "tiny")
        assert "torch" in str(info.value)
        assert upstream.requests == []


@pytest.mark.parametrize(
    ("choice", "refused"),
    [
        ("auto", True),
        (None, True),
        ("required", False),
        ("none", False),
        ({"type": "function", "function": {"name": "get_weather"}}, False),
    ],
)
def test_in_process_vllm_takes_auto_tools_only_with_a_tool_parser(choice: Any, refused: bool) -> None:
    """vLLM's structured outputs write a forced call (proposers.vllm_tools); under auto the model decides and a
    vLLM tool parser reads its calls (proposers.vllm_tool_parser): without one, auto is refused saying so."""
    from moa.config import VLLMBackendConfig
    from moa.tools import ToolSpec

    spec = ToolSpec.model_validate({"tools": [WEATHER], "tool_choice": choice})
    reason = VLLMBackendConfig(type="vllm", model="m").tools_refusal(spec)
    assert (reason is not None) == refused
    if refused:
        assert reason is not None and "set tool_parser" in reason and "'required' or a named function" in reason
    assert VLLMBackendConfig(type="vllm", model="m", tool_parser="hermes").tools_refusal(spec) is None
