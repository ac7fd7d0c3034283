"""The Responses clients people use, against a real ``moa serve``: LangChain's ``ChatOpenAI(use_responses_api=True)``
(whole, streamed, a conversation continued by ``previous_response_id``) and ``litellm.responses``."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from tests.support.scripted_server import ScriptedServer
from tests.support.server_harness import ServeProcess, ensemble, moa_serve

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # litellm: no fetch of its price list at import


@pytest.fixture(scope="module")
def serve(upstream_sync_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    directory = tmp_path_factory.mktemp("responses-clients")
    store = f"sqlite:///{directory / 'responses.sqlite3'}"
    with moa_serve(
        directory, [ensemble(upstream_sync_url, "fast", [["p1", "p2"]], "agg")], "--response-store", store
    ) as s:
        yield s


def test_langchain_chat_openai_with_the_responses_api(serve: ServeProcess, upstream_thread: ScriptedServer) -> None:
    from langchain_openai import ChatOpenAI

    upstream_thread.script("agg", answer="langchain reads this")
    llm = ChatOpenAI(model="fast", base_url=serve.base_url, api_key="unused", use_responses_api=True, max_retries=0)
    reply = llm.invoke([("system", "Be brief."), ("user", "hi")])
    assert reply.text == "langchain reads this"
    assert reply.usage_metadata is not None and reply.usage_metadata["input_tokens"] == 30
    assert reply.response_metadata["id"].startswith("resp_")
    streamed = "".join(chunk.text for chunk in llm.stream("hi"))
    assert streamed == "langchain reads this"
    (first_call, *_) = upstream_thread.for_model("p1")
    assert first_call.messages == [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]


def test_langchain_continues_a_stored_conversation(serve: ServeProcess, upstream_thread: ScriptedServer) -> None:
    from langchain_openai import ChatOpenAI

    upstream_thread.script("agg", answer=lambda m, msgs, i: f"turn {sum(x['role'] == 'user' for x in msgs)}")
    llm = ChatOpenAI(
        model="fast", base_url=serve.base_url, api_key="unused", use_responses_api=True, use_previous_response_id=True
    )
    first = llm.invoke("one")
    second = llm.invoke(["one", first, "two"])  # only "two" is sent, with the first's id
    with serve.client() as client:
        stored = client.responses.retrieve(second.response_metadata["id"])
    assert stored.previous_response_id == first.response_metadata["id"]
    assert upstream_thread.for_model("p1")[-1].messages == [
        {"role": "user", "content": "one"},
        {"role": "assistant", "content": first.text},
        {"role": "user", "content": "two"},
    ]


def test_litellm_responses(serve: ServeProcess, upstream_thread: ScriptedServer) -> None:
    import litellm

    upstream_thread.script("agg", answer="litellm reads this")
    response = litellm.responses(
        model="openai/fast", input="hi", api_base=serve.base_url, api_key="unused", max_output_tokens=32
    )
    assert response.output[0].content[0].text == "litellm reads this"
    assert response.usage.input_tokens == 30
    events = list(
        litellm.responses(model="openai/fast", input="hi", api_base=serve.base_url, api_key="unused", stream=True)
    )
    deltas = "".join(getattr(e, "delta", "") for e in events if e.type == "response.output_text.delta")
    assert deltas == "litellm reads this" and events[-1].type == "response.completed"


def test_an_openai_agents_agent_runs_on_its_default_responses_model(
    serve: ServeProcess, upstream_thread: ScriptedServer
) -> None:
    from agents import Agent, OpenAIResponsesModel, Runner, set_tracing_disabled

    set_tracing_disabled(True)
    upstream_thread.script("agg", answer="the agent's answer")
    model = OpenAIResponsesModel(model="fast", openai_client=serve.aclient())
    agent = Agent(name="helper", instructions="Be brief.", model=model)
    result = Runner.run_sync(agent, "hi")
    assert result.final_output == "the agent's answer"
    assert upstream_thread.for_model("p1")[-1].messages[0] == {"role": "system", "content": "Be brief."}
