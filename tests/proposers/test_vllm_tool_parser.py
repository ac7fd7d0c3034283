"""In-process vLLM under ``tool_choice: auto``: the embedded SmolLM2-135M behind a tools-aware ChatML template
(``tests/support/chatml_tools.jinja``, the ``chat_template:`` override) and vLLM's own ``hermes`` tool parser
(``tool_parser: hermes``). The model decides: shown earlier calls of the same tool (greedy), it writes a call,
which comes back parsed, whole and streamed as OpenAI's pieces; asked plainly, it answers in text. One engine for
the module (the template and the parser are part of its backend's config).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from moa import Ensemble
from moa.ensemble import build_messages
from moa.errors import ConfigError
from moa.tools import ToolSpec, calls_of
from moa.types import SamplingParams

pytestmark = pytest.mark.vllm

TEMPLATE = Path(__file__).resolve().parents[1] / "support" / "chatml_tools.jinja"
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather now in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}


def _call(city: str, i: int) -> dict[str, Any]:
    arguments = json.dumps({"city": city})
    return {"role": "assistant", "content": None, "tool_calls": [
        {"id": f"call_{i}", "type": "function", "function": {"name": "get_weather", "arguments": arguments}}
    ]}  # fmt: skip


#: three earlier turns that each called the tool: the 135M model, greedy, calls it for the fourth city too
SHOWN = [
    {"role": "user", "content": "Weather in Rome?"}, _call("Rome", 1),
    {"role": "user", "content": "Weather in Oslo?"}, _call("Oslo", 2),
    {"role": "user", "content": "Weather in Lima?"}, _call("Lima", 3),
    {"role": "user", "content": "Weather in Paris?"},
]  # fmt: skip
PLAIN = [{"role": "user", "content": "What is the weather in Paris?"}]


def config(name: str = "auto-tools") -> dict[str, Any]:
    backend = {"type": "vllm", "model": "embedded:smollm2-135m-instruct", "max_model_len": 2048,
               "chat_template": str(TEMPLATE), "tool_parser": "hermes"}  # fmt: skip
    agent = {"backend": "local", "max_tokens": 40, "temperature": 0.0}
    return {
        "name": name,
        "backends": {"local": backend},
        "layers": [{"agents": [agent]}],
        "aggregator": {"backend": "local", "max_tokens": 40, "temperature": 0.0},
        "decide": "vote",  # calls a strict majority of the proposals agree on are the answer
    }


@pytest.fixture(scope="module")
async def ensemble() -> AsyncIterator[Ensemble]:
    async with Ensemble.from_config(config()) as ens:
        await ens.astart()
        yield ens


def _proposer(ensemble: Ensemble) -> Any:
    return ensemble.backends["local"].proposer


async def test_the_model_calls_the_tool_and_the_parser_reads_the_call_whole_and_streamed(ensemble: Ensemble) -> None:
    """Before: a 400 naming tools ('auto' needs a tool parser, not built)."""
    proposer = _proposer(ensemble)
    spec = ToolSpec.model_validate({"tools": [WEATHER], "tool_choice": "auto"})
    params = SamplingParams(temperature=0.0, max_tokens=40, tools=spec)
    messages = build_messages(SHOWN)
    (whole,) = (await proposer.generate(messages, params)).generations
    assert whole.finish_reason == "tool_calls" and whole.text == ""  # the markup is not left in the text
    ((name, arguments),) = [(c.name, json.loads(c.arguments)) for c in whole.tool_calls]
    assert (name, arguments) == ("get_weather", {"city": "Paris"})
    deltas = [d async for d in proposer.stream(messages, params)]
    streamed = calls_of([p for d in deltas for p in d.tool_calls])
    assert [(c.name, json.loads(c.arguments)) for c in streamed] == [("get_weather", {"city": "Paris"})]
    assert "".join(d.content for d in deltas) == "" and deltas[-1].finish_reason == "tool_calls"
    assert streamed[0].id  # an id in its first piece


async def test_asked_plainly_the_model_answers_in_text_and_the_tools_reach_its_template(ensemble: Ensemble) -> None:
    result = await ensemble.acomplete(PLAIN, tools=[WEATHER])
    assert result.choices[0].message.tool_calls is None and "Paris" in (result.text or "")
    assert result.choices[0].finish_reason in ("stop", "length")
    without = await ensemble.acomplete(PLAIN, tools=[WEATHER], tool_choice="none")
    offered, left_out = result.trace[0].prompt_tokens, without.trace[0].prompt_tokens
    assert offered is not None and left_out is not None
    assert offered > left_out + 50  # the template wrote the tool's schema (none leaves the tools out)


async def test_agreeing_calls_through_the_ensemble_are_the_answer_whole_and_streamed(ensemble: Ensemble) -> None:
    """``decide: vote`` (the module's config): the proposer's parsed call is a strict majority of one, so it is
    the answer and the aggregator's call is skipped. (Under
    ``decide: aggregator`` the 135M aggregator copies the reference's text form of the call, ``[tool call]
    get_weather({...})``, instead of calling: a model that small does not write its own call after reading one.)"""
    result = await ensemble.acomplete(SHOWN, tools=[WEATHER])
    (call,) = result.choices[0].message.tool_calls or []
    assert call["function"]["name"] == "get_weather" and json.loads(call["function"]["arguments"]) == {"city": "Paris"}
    assert result.choices[0].finish_reason == "tool_calls"
    assert [(r.role, r.outcome) for r in result.trace] == [("proposer", "ok"), ("aggregator", "skipped")]
    deltas = [d async for d in ensemble.astream(SHOWN, tools=[WEATHER])]
    (streamed,) = calls_of([p for d in deltas for p in d.tool_calls])
    assert (streamed.name, json.loads(streamed.arguments)) == ("get_weather", {"city": "Paris"})
    assert deltas[-1].finish_reason == "tool_calls"


def test_an_unknown_tool_parser_is_refused_naming_the_field_and_the_known_ones() -> None:
    bad = config("bad-parser")
    bad["backends"]["local"]["tool_parser"] = "no-such-parser"
    with pytest.raises(ConfigError) as info:
        Ensemble.from_config(bad)
    assert info.value.path == "backends.local.tool_parser"
    assert "hermes" in str(info.value) and "no-such-parser" in str(info.value)
