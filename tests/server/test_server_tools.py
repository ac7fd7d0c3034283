"""Tools over ``moa serve`` with the clients people build agents with, against a scripted upstream whose aggregator
calls ``get_weather`` and answers in text once the conversation holds the tool's result: the official client whole
and streamed, LangChain's ``bind_tools`` and a ``create_agent`` loop running a real Python tool, litellm, and
openai-agents with a ``function_tool`` over its chat-completions model."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.support.scripted_server import Call, Reply, ScriptedServer
from tests.support.server_harness import ServeProcess, ensemble, moa_serve
from tests.support.weather_agent import run_weather_agent

USER = [{"role": "user", "content": "What is the weather in Paris?", "name": "alice"}]
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "The weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
    },
}
FINAL = "It is sunny in Paris, 21C."


def weather_agent(model: str, messages: list[dict[str, Any]], index: int) -> str | Reply:
    """Calls get_weather until the conversation holds a tool's result, then answers from it."""
    results = [m["content"] for m in messages if m["role"] == "tool"]
    if results:
        return f"{FINAL} ({results[-1]})"
    return Reply(None, (Call("get_weather", '{"city": "Paris"}', "call_up_1"),))


@pytest.fixture(scope="module")
def serve(upstream_sync_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    configs = [ensemble(upstream_sync_url, "tools", [["t1", "t2"]], "tagg")]
    with moa_serve(tmp_path_factory.mktemp("serve-tools"), configs) as server:
        yield server


@pytest.fixture
def scripted(upstream_thread: ScriptedServer) -> ScriptedServer:
    upstream_thread.script("tagg", answer=weather_agent)
    return upstream_thread


def test_the_official_client_gets_the_call_whole_and_every_upstream_the_tools_and_names(
    serve: ServeProcess, scripted: ScriptedServer
) -> None:
    with serve.client() as client:
        completion = client.chat.completions.create(
            model="tools", messages=USER, tools=[WEATHER], tool_choice="auto", parallel_tool_calls=False
        )  # type: ignore[call-overload]
    choice = completion.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content is None
    [call] = choice.message.tool_calls or []
    assert call.id == "call_up_1" and call.type == "function"
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert sorted(r.model for r in scripted.requests) == ["t1", "t2", "tagg"]
    for rec in scripted.requests:
        assert rec.body["tools"] == [WEATHER] and rec.body["tool_choice"] == "auto", rec.model
        assert rec.body["parallel_tool_calls"] is False
        assert rec.messages[0] == USER[0], rec.model  # the name reached every upstream


def test_the_official_client_reassembles_the_streamed_call_and_continues_the_history(
    serve: ServeProcess, scripted: ScriptedServer
) -> None:
    with serve.client() as client:
        stream = client.chat.completions.create(model="tools", messages=USER, tools=[WEATHER], stream=True)  # type: ignore[call-overload]
        calls: dict[int, dict[str, str]] = {}
        finish = None
        for chunk in stream:
            for choice in chunk.choices:
                finish = choice.finish_reason or finish
                for piece in choice.delta.tool_calls or []:
                    call = calls.setdefault(piece.index, {"id": "", "name": "", "arguments": ""})
                    call["id"] += piece.id or ""
                    call["name"] += (piece.function.name or "") if piece.function else ""
                    call["arguments"] += (piece.function.arguments or "") if piece.function else ""
        assert finish == "tool_calls"
        assert calls == {0: {"id": "call_up_1", "name": "get_weather", "arguments": '{"city": "Paris"}'}}
        history = [
            *USER,
            {
                "role": "assistant",
                "content": None,
                "tool_calls": [
                    {"id": "call_up_1", "type": "function", "function": {"name": "get_weather", "arguments": "{}"}}
                ],
            },
            {"role": "tool", "tool_call_id": "call_up_1", "content": "sunny, 21C"},
        ]
        answer = client.chat.completions.create(model="tools", messages=history, tools=[WEATHER])  # type: ignore[call-overload]
    assert answer.choices[0].message.content == f"{FINAL} (sunny, 21C)"
    assert answer.choices[0].finish_reason == "stop"


def test_langchain_bind_tools_gets_the_call_whole_and_streamed(serve: ServeProcess, scripted: ScriptedServer) -> None:
    from langchain_openai import ChatOpenAI

    llm = ChatOpenAI(base_url=serve.base_url, api_key="unused", model="tools", max_retries=0).bind_tools([WEATHER])  # type: ignore[arg-type]
    message = llm.invoke("What is the weather in Paris?")
    assert message.tool_calls == [  # type: ignore[attr-defined]
        {"name": "get_weather", "args": {"city": "Paris"}, "id": "call_up_1", "type": "tool_call"}
    ]
    chunks = list(llm.stream("What is the weather in Paris?"))
    joined = chunks[0]
    for chunk in chunks[1:]:
        joined = joined + chunk
    assert joined.tool_calls == message.tool_calls  # type: ignore[attr-defined]


def test_a_langchain_create_agent_loop_runs_a_real_tool_and_answers_from_its_result(
    serve: ServeProcess, scripted: ScriptedServer
) -> None:
    from langchain.agents import create_agent
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    asked: list[str] = []

    @tool
    def get_weather(city: str) -> str:
        """The weather in a city."""
        asked.append(city)
        return f"sunny, 21C in {city}"

    model = ChatOpenAI(base_url=serve.base_url, api_key="unused", model="tools", max_retries=0)
    agent = create_agent(model, tools=[get_weather])
    out = agent.invoke({"messages": [{"role": "user", "content": "What is the weather in Paris?"}]})
    assert asked == ["Paris"]
    assert out["messages"][-1].content == f"{FINAL} (sunny, 21C in Paris)"
    second = scripted.for_model("tagg")[-1].messages  # the history reached the aggregator: the call and its result
    assert any(m.get("tool_calls") for m in second)
    assert {"role": "tool", "content": "sunny, 21C in Paris", "tool_call_id": "call_up_1"}.items() <= next(
        m for m in second if m["role"] == "tool"
    ).items()


def test_litellm_gets_the_call_whole_and_streamed(serve: ServeProcess, scripted: ScriptedServer) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network: the bundled cost map
    import litellm

    with openai.OpenAI(base_url=serve.base_url, api_key="unused", max_retries=0) as oc:
        whole = litellm.completion(model="openai/tools", messages=USER, tools=[WEATHER], client=oc)
        [call] = whole.choices[0].message.tool_calls  # type: ignore[union-attr]
        assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
        stream = litellm.completion(model="openai/tools", messages=USER, tools=[WEATHER], client=oc, stream=True)
        chunks = list(stream)
    rebuilt = litellm.stream_chunk_builder(chunks, messages=USER)
    [streamed] = rebuilt.choices[0].message.tool_calls  # type: ignore[union-attr]
    assert streamed.id == "call_up_1" and json.loads(streamed.function.arguments) == {"city": "Paris"}


def test_openai_agents_runs_a_function_tool_over_the_chat_completions_model(
    serve: ServeProcess, scripted: ScriptedServer
) -> None:
    from agents import OpenAIChatCompletionsModel

    final, asked = run_weather_agent(serve.base_url, OpenAIChatCompletionsModel)
    assert final == f"{FINAL} (sunny, 21C in Paris)"
    assert asked == ["Paris"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_call_breaking_a_named_tool_choice_after_its_repair_is_a_502_naming_it(
    serve: ServeProcess, upstream_thread: ScriptedServer, stream: bool
) -> None:
    upstream_thread.script("tagg", answer="It is probably sunny.")  # text, though tool_choice names the function
    named = {"type": "function", "function": {"name": "get_weather"}}
    with serve.client() as client, pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(model="tools", messages=USER, tools=[WEATHER], tool_choice=named, stream=stream)
    assert info.value.status_code == 502
    error = info.value.body
    assert isinstance(error, dict) and error["code"] == "invalid_tool_call" and error["param"] == "tool_choice"
    assert "tool_choice names 'get_weather', but the answer calls no tool (after one repair call)" in error["message"]
    assert len(upstream_thread.for_model("tagg")) == 2  # the answer and one repair
