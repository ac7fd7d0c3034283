"""``proposers.vllm_tool_parser`` with vLLM's real ``hermes`` parser and the embedded model's tokenizer, no engine:
a stream split at awkward places comes out as the text and call pieces a whole read gives; text the parser held
back as a possible call marker that never came is given out at the end; ``parallel_tool_calls: false`` keeps the
first call."""

from __future__ import annotations

import json
from typing import Any

import pytest

from moa.tools import ToolSpec, calls_of

pytest.importorskip("vllm")

from proposers.vllm_tool_parser import AutoCalls, parser_class  # noqa: E402

ANSWER = (
    'Let me check.<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>\n'
    '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Rome"}}\n</tool_call>'
)


@pytest.fixture(scope="module")
def tokenizer() -> Any:
    from transformers import AutoTokenizer

    from proposers.embedded import resolve_model

    return AutoTokenizer.from_pretrained(resolve_model("embedded:smollm2-135m-instruct"))


def _spec(parallel: bool | None = None) -> ToolSpec:
    weather = {"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}
    return ToolSpec.model_validate({"tools": [weather], "tool_choice": "auto", "parallel_tool_calls": parallel})


def _streamed(auto: AutoCalls, text: str, tokenizer: Any, step: int) -> tuple[str, list[Any]]:
    written, pieces = "", []
    for i in range(0, len(text), step):
        piece = text[i : i + step]
        content, calls = auto.piece(piece, tokenizer.encode(piece, add_special_tokens=False))
        written += content
        pieces += calls
    pieces += auto.rest()
    return written + auto.unsent_text(), pieces


@pytest.mark.parametrize("step", [1, 3, 7, 1000])
def test_a_stream_split_anywhere_reads_as_the_whole_answer(tokenizer: Any, step: int) -> None:
    whole = AutoCalls.start(parser_class("hermes", "local"), tokenizer, _spec(), "m").whole(ANSWER)
    assert whole.text == "Let me check."
    assert [(c.name, json.loads(c.arguments)) for c in whole.calls] == [
        ("get_weather", {"city": "Paris"}),
        ("get_weather", {"city": "Rome"}),
    ]
    auto = AutoCalls.start(parser_class("hermes", "local"), tokenizer, _spec(), "m")
    text, pieces = _streamed(auto, ANSWER, tokenizer, step)
    assert text == "Let me check." and auto.called
    calls = calls_of(pieces)
    assert [(c.name, json.loads(c.arguments)) for c in calls] == [
        (c.name, json.loads(c.arguments)) for c in whole.calls
    ]
    assert len({c.id for c in calls}) == 2  # an id each, in its first piece


def test_text_held_back_as_a_possible_marker_is_given_out_at_the_end(tokenizer: Any) -> None:
    auto = AutoCalls.start(parser_class("hermes", "local"), tokenizer, _spec(), "m")
    text, pieces = _streamed(auto, "It is sunny <tool", tokenizer, 4)
    assert (text, pieces, auto.called) == ("It is sunny <tool", [], False)


def test_parallel_tool_calls_false_keeps_the_first_call(tokenizer: Any) -> None:
    parser = parser_class("hermes", "local")
    whole = AutoCalls.start(parser, tokenizer, _spec(parallel=False), "m").whole(ANSWER)
    assert [json.loads(c.arguments) for c in whole.calls] == [{"city": "Paris"}]
    _, pieces = _streamed(AutoCalls.start(parser, tokenizer, _spec(parallel=False), "m"), ANSWER, tokenizer, 5)
    assert [json.loads(c.arguments) for c in calls_of(pieces)] == [{"city": "Paris"}]
