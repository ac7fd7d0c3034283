"""Function tools through the Responses API: ``tools`` and ``tool_choice`` in the Responses shape reach every
proposer and the aggregator as the chat request's tools; the aggregator's calls come back as ``function_call``
items, whole and streamed (``response.function_call_arguments.*``); ``function_call_output`` items (sent, or stored
under ``previous_response_id``) continue the conversation; openai-agents' default Responses model runs a
``function_tool`` to its final answer."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest

from tests.support.scripted_server import Call, Reply, ScriptedServer
from tests.support.server_harness import ServeProcess, ensemble, moa_serve
from tests.support.weather_agent import run_weather_agent

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]},
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
    directory = tmp_path_factory.mktemp("responses-tools")
    store = f"sqlite:///{directory / 'responses.sqlite3'}"
    with moa_serve(
        directory, [ensemble(upstream_sync_url, "tools", [["t1", "t2"]], "tagg")], "--response-store", store
    ) as s:
        yield s


@pytest.fixture
def client(serve: ServeProcess, upstream_thread: ScriptedServer) -> Iterator[openai.OpenAI]:
    upstream_thread.script("tagg", answer=weather_agent)
    with serve.client(timeout=30) as c:
        yield c


def test_the_call_comes_back_as_a_function_call_item_and_every_upstream_got_the_tools(
    client: openai.OpenAI, upstream_thread: ScriptedServer
) -> None:
    response = client.responses.create(
        model="tools", input="Weather in Paris?", tools=[WEATHER], tool_choice="required"
    )  # type: ignore[list-item]
    (call,) = response.output
    assert call.type == "function_call" and call.id.startswith("fc_")  # type: ignore[union-attr]
    assert (call.call_id, call.name, json.loads(call.arguments)) == ("call_up_1", "get_weather", {"city": "Paris"})  # type: ignore[union-attr]
    assert response.status == "completed" and response.output_text == ""
    assert response.tools[0].name == "get_weather" and response.tool_choice == "required"  # type: ignore[union-attr]
    for model in ("t1", "t2", "tagg"):
        (seen,) = upstream_thread.for_model(model)
        assert seen.body["tools"][0]["function"]["name"] == "get_weather", model
    assert upstream_thread.for_model("tagg")[0].body["tool_choice"] == "required"


def test_a_named_tool_choice_is_sent_in_the_chat_shape(client: openai.OpenAI, upstream_thread: ScriptedServer) -> None:
    choice = {"type": "function", "name": "get_weather"}
    response = client.responses.create(
        model="tools", input="hi", tools=[WEATHER], tool_choice=choice, parallel_tool_calls=False
    )  # type: ignore[arg-type,list-item]
    assert response.tool_choice.name == "get_weather" and response.parallel_tool_calls is False  # type: ignore[union-attr]
    sent = upstream_thread.for_model("tagg")[0].body
    assert sent["tool_choice"] == {"type": "function", "function": {"name": "get_weather"}}
    assert sent["parallel_tool_calls"] is False


def test_function_call_output_items_continue_the_conversation(
    client: openai.OpenAI, upstream_thread: ScriptedServer
) -> None:
    first = client.responses.create(model="tools", input="Weather in Paris?", tools=[WEATHER])  # type: ignore[list-item]
    (call,) = first.output
    result = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny, 21C"}  # type: ignore[union-attr]
    by_id = client.responses.create(model="tools", input=[result], tools=[WEATHER], previous_response_id=first.id)  # type: ignore[list-item]
    assert by_id.output_text == f"{FINAL} (sunny, 21C)"
    seen = upstream_thread.for_model("t1")[-1].messages
    assert seen[0] == {"role": "user", "content": "Weather in Paris?"}
    assert seen[1]["role"] == "assistant" and seen[1]["tool_calls"][0]["id"] == call.call_id  # type: ignore[union-attr]
    assert seen[2] == {"role": "tool", "content": "sunny, 21C", "tool_call_id": call.call_id}  # type: ignore[union-attr]
    resent = [{"role": "user", "content": "Weather in Paris?"}, call.model_dump(exclude_none=True), result]
    whole = client.responses.create(model="tools", input=resent, tools=[WEATHER], store=False)  # type: ignore[arg-type,list-item]
    assert whole.output_text == by_id.output_text  # the items sent back as they came: the same conversation
    orphan = {"type": "function_call_output", "call_id": "call_never", "output": "x"}
    with pytest.raises(openai.BadRequestError) as e:
        client.responses.create(model="tools", input=[{"role": "user", "content": "hi"}, orphan], tools=[WEATHER])  # type: ignore[list-item]
    assert e.value.body["param"] == "input[1].call_id"  # type: ignore[index]


def test_a_streamed_call_is_a_function_call_item_with_argument_deltas(
    client: openai.OpenAI, upstream_thread: ScriptedServer
) -> None:
    with client.responses.stream(model="tools", input="Weather in Paris?", tools=[WEATHER]) as stream:  # type: ignore[list-item]
        events = list(stream)
        final = stream.get_final_response()
    kinds = [e.type for e in events]
    assert kinds[:3] == ["response.created", "response.in_progress", "response.output_item.added"]
    assert kinds[-3:] == ["response.function_call_arguments.done", "response.output_item.done", "response.completed"]
    assert "response.function_call_arguments.delta" in kinds and "response.output_text.delta" not in kinds
    deltas = "".join(e.delta for e in events if e.type == "response.function_call_arguments.delta")  # type: ignore[union-attr]
    assert json.loads(deltas) == {"city": "Paris"}
    assert [e.sequence_number for e in events] == list(range(len(events)))
    (call,) = final.output
    assert (
        call.type == "function_call" and call.name == "get_weather" and json.loads(call.arguments) == {"city": "Paris"}
    )  # type: ignore[union-attr]
    stored = client.responses.retrieve(final.id).output[0]
    assert (stored.id, stored.call_id, stored.arguments) == (call.id, call.call_id, call.arguments)  # type: ignore[union-attr]


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"tools": [{"type": "function", "name": "bad name!"}]}, "tools[0].name"),
        ({"tools": [WEATHER, WEATHER]}, "tools[1].name"),
        ({"tools": [WEATHER], "tool_choice": {"type": "function", "name": "other"}}, "tool_choice.name"),
        ({"tools": [WEATHER], "tool_choice": {"type": "file_search"}}, "tool_choice"),
        ({"tool_choice": "required"}, "tool_choice"),
    ],
)
def test_bad_tools_are_400_naming_them_in_the_responses_terms(
    serve: ServeProcess, body: dict[str, Any], param: str
) -> None:
    raw = json.dumps({"model": "tools", "input": "hi", **body}).encode()
    status, _, answer = serve.request("POST", "/v1/responses", raw, {"Content-Type": "application/json"})
    assert status == 400 and json.loads(answer)["error"]["param"] == param, answer


def test_openai_agents_runs_a_function_tool_on_its_default_responses_model(
    serve: ServeProcess, upstream_thread: ScriptedServer
) -> None:
    from agents import OpenAIResponsesModel

    upstream_thread.script("tagg", answer=weather_agent)
    final, asked = run_weather_agent(serve.base_url, OpenAIResponsesModel)
    assert final == f"{FINAL} (sunny, 21C in Paris)"
    assert asked == ["Paris"]
