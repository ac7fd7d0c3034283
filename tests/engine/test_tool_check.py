"""The final answer's tool calls are checked against what the request asks of them (``moa.tool_check``): a call
that breaks ``tool_choice``, ``parallel_tool_calls``, the offered tools or a strict tool's schema gets one repair
call quoting the problem, then ``InvalidToolCallError``; unconstrained tools (``auto``) are not checked and stream
as they come. The aggregator is the scripted upstream's ``agg``."""

from __future__ import annotations

from typing import Any

import pytest

from moa import Ensemble
from moa.errors import InvalidToolCallError
from moa.repair import REPAIR_PROMPT
from tests.support.ensembles import moa_config
from tests.support.scripted_server import Call, Reply, ScriptedServer

REPAIR_OPENING = REPAIR_PROMPT.split("{problem}")[0]
PARAMETERS = {
    "type": "object",
    "properties": {"city": {"type": "string"}},
    "required": ["city"],
    "additionalProperties": False,
}
WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": PARAMETERS}}
STRICT_WEATHER = {"type": "function", "function": {"name": "get_weather", "parameters": PARAMETERS, "strict": True}}
TIME = {"type": "function", "function": {"name": "get_time", "parameters": {"type": "object"}}}
USER = [{"role": "user", "content": "Weather in Paris?"}]
PARIS = Reply(None, (Call("get_weather", '{"city": "Paris"}', "call_ok"),))
NAMED = {"type": "function", "function": {"name": "get_weather"}}


def repaired_by(first: Reply | str, then: Reply | str) -> Any:
    """An aggregator that answers ``first``, and ``then`` to a repair call."""

    def answer(model: str, messages: list[dict[str, Any]], index: int) -> Reply | str:
        last = messages[-1].get("content") or ""
        return then if isinstance(last, str) and last.startswith(REPAIR_OPENING) else first

    return answer


def _repair_prompt(upstream: ScriptedServer) -> str:
    repair = upstream.for_model("agg")[-1].messages[-1]["content"]
    assert isinstance(repair, str) and repair.startswith(REPAIR_OPENING)
    return repair


@pytest.mark.parametrize(
    ("bad", "overrides", "problem"),
    [
        (
            "I think it is sunny.",
            {"tool_choice": "required"},
            "tool_choice is 'required', but the answer calls no tool",
        ),
        ("It is sunny.", {"tool_choice": NAMED}, "tool_choice names 'get_weather', but the answer calls no tool"),
        (
            Reply(None, (Call("get_time", "{}", "c1"),)),
            {"tool_choice": NAMED, "tools": [WEATHER, TIME]},
            "tool_choice names 'get_weather', but the answer calls 'get_time'",
        ),
        (
            Reply(None, (Call("get_weather", '{"city": 7}', "c1"),)),
            {"tools": [STRICT_WEATHER]},
            "the arguments of 'get_weather' do not match its parameters: at $.city: 7 is not of type 'string'",
        ),
        (
            Reply(None, (Call("get_weather", "Paris", "c1"),)),
            {"tool_choice": "required"},
            "the arguments of 'get_weather' are not valid JSON",
        ),
        (
            Reply(None, (Call("get_weather", '["Paris"]', "c1"),)),
            {"tool_choice": "required"},
            "the arguments of 'get_weather' are not a JSON object: '[\"Paris\"]'",
        ),
        (
            Reply(None, (Call("get_forecast", '{"city": "Paris"}', "c1"),)),
            {"tool_choice": "required"},
            "the answer calls 'get_forecast', which is not one of the tools ('get_weather')",
        ),
    ],
)
async def test_a_call_that_breaks_the_request_gets_one_repair_call_quoting_the_problem(
    upstream: ScriptedServer, bad: Reply | str, overrides: dict[str, Any], problem: str
) -> None:
    upstream.script("agg", answer=repaired_by(bad, PARIS))
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        result = await ens.acomplete(USER, **{"tools": [WEATHER], **overrides})
    assert [c["function"] for c in result.tool_calls] == [{"name": "get_weather", "arguments": '{"city": "Paris"}'}]
    assert result.choices[0].finish_reason == "tool_calls"
    assert len(upstream.for_model("agg")) == 2
    assert problem in _repair_prompt(upstream)
    assert [r.step for r in result.trace if r.role == "aggregator"][-1] == "repair"


async def test_a_call_still_wrong_after_the_repair_is_an_error_naming_the_field(upstream: ScriptedServer) -> None:
    two = Reply(None, (Call("get_weather", '{"city": "Paris"}', "a"), Call("get_weather", '{"city": "Lyon"}', "b")))
    upstream.script("agg", answer=two)
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        with pytest.raises(InvalidToolCallError) as err:
            await ens.acomplete(USER, tools=[WEATHER], parallel_tool_calls=False)
    assert err.value.param == "parallel_tool_calls"
    assert "parallel_tool_calls is false, but the answer makes 2 calls" in str(err.value)
    assert "(after one repair call)" in str(err.value)
    assert len(upstream.for_model("agg")) == 2


async def test_a_call_under_tool_choice_none_is_repaired_into_text(upstream: ScriptedServer) -> None:
    upstream.script("agg", answer=repaired_by(PARIS, "It is sunny in Paris."))
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        result = await ens.acomplete(USER, tools=[WEATHER], tool_choice="none")
    assert result.text == "It is sunny in Paris." and result.tool_calls == []
    assert "tool_choice is 'none', but the answer calls 'get_weather'" in _repair_prompt(upstream)


async def test_a_stream_under_a_constraint_sends_only_the_checked_calls(upstream: ScriptedServer) -> None:
    upstream.script("agg", answer=repaired_by("Let me think.", PARIS))
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        deltas = [d async for d in ens.astream(USER, tools=[WEATHER], tool_choice="required")]
    assert "".join(d.content for d in deltas) == ""  # the refused text never reached the stream
    names = [p.name for d in deltas for p in d.tool_calls if p.name]
    assert names == ["get_weather"] and deltas[-1].finish_reason == "tool_calls"


async def test_unconstrained_tools_are_not_checked(upstream: ScriptedServer) -> None:
    """``auto`` with no strict tool: the answer is the model's choice, passed on as OpenAI passes it (no repair)."""
    upstream.script("agg", answer=Reply(None, (Call("get_forecast", "Paris", "c1"),)))
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        result = await ens.acomplete(USER, tools=[WEATHER], tool_choice="auto")
    assert [c["function"]["name"] for c in result.tool_calls] == ["get_forecast"]
    assert len(upstream.for_model("agg")) == 1


async def test_a_tool_call_turn_is_not_held_to_the_answers_response_format(upstream: ScriptedServer) -> None:
    """openai-agents' output_type sends response_format beside tools: a turn that calls a tool is not the answer
    the format is for (it used to get a repair call, then a 502 invalid_structured_output)."""
    upstream.script("agg", answer=PARIS)
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        result = await ens.acomplete(
            USER, tools=[WEATHER], tool_choice="required", response_format={"type": "json_object"}
        )
    assert [c["function"]["name"] for c in result.tool_calls] == ["get_weather"]
    assert len(upstream.for_model("agg")) == 1


async def test_arguments_nested_past_pythons_recursion_limit_are_a_problem_not_a_crash(
    upstream: ScriptedServer,
) -> None:
    deep = Reply(None, (Call("get_weather", "[" * 100_000, "c1"),))
    upstream.script("agg", answer=deep)
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        with pytest.raises(InvalidToolCallError, match="are not valid JSON"):
            await ens.acomplete(USER, tools=[WEATHER], tool_choice="required")


def test_a_required_call_schema_keeps_each_tools_definitions_reachable() -> None:
    """``required``'s schema nests each tool's parameters; their ``$defs`` (pydantic writes them) go to the root,
    where their ``#/$defs/...`` references point."""
    import jsonschema

    from moa.tools import ToolSpec
    from proposers.vllm_tools import call_schema

    parameters = {
        "type": "object",
        "properties": {"place": {"$ref": "#/$defs/Place"}},
        "required": ["place"],
        "$defs": {"Place": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}},
    }
    spec = ToolSpec.model_validate(
        {
            "tools": [{"type": "function", "function": {"name": "f", "parameters": parameters}}],
            "tool_choice": "required",
        }
    )
    schema = call_schema(spec)
    jsonschema.validate([{"name": "f", "arguments": {"place": {"city": "Paris"}}}], schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate([{"name": "f", "arguments": {"place": {"city": 7}}}], schema)
