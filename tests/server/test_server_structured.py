"""Structured outputs over ``moa serve``: the official client's ``parse()``, LangChain's ``with_structured_output``,
a stream that sends only the checked answer, and a 502 ``invalid_structured_output`` after one repair."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from pydantic import BaseModel

from moa.repair import REPAIR_PROMPT
from tests.support.scripted_server import ScriptedServer
from tests.support.server_harness import ServeProcess, ensemble, moa_serve

USER = [{"role": "user", "content": "Describe a city."}]
GOOD = '{"name": "Lyon", "population": 522000}'
REPAIR_OPENING = REPAIR_PROMPT.split("{problem}")[0]


class City(BaseModel):
    name: str
    population: int


def repaired_by(first: str, then: str) -> Any:
    def answer(model: str, messages: list[dict[str, str]], index: int) -> str:
        return then if messages[-1]["content"].startswith(REPAIR_OPENING) else first

    return answer


@pytest.fixture(scope="module")
def serve(upstream_sync_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    configs = [ensemble(upstream_sync_url, "json", [["s1", "s2"]], "sagg")]
    with moa_serve(tmp_path_factory.mktemp("serve-structured"), configs) as server:
        yield server


def test_the_official_clients_parse_gets_the_checked_object(
    serve: ServeProcess, upstream_thread: ScriptedServer
) -> None:
    upstream_thread.script("sagg", answer=repaired_by('{"name": "Lyon"}', GOOD))
    with serve.client() as client:
        completion = client.chat.completions.parse(model="json", messages=USER, response_format=City)  # type: ignore[arg-type]
    assert completion.choices[0].message.parsed == City(name="Lyon", population=522000)
    first, repair = upstream_thread.for_model("sagg")
    assert first.body["response_format"]["json_schema"]["name"] == "City"
    assert "at $: 'population' is a required property" in repair.messages[-1]["content"]
    assert all("response_format" not in r.body for r in upstream_thread.for_model("s1"))


def test_a_stream_with_a_format_sends_the_checked_answer(serve: ServeProcess, upstream_thread: ScriptedServer) -> None:
    upstream_thread.script("sagg", answer=repaired_by("Lyon, 522000 people", GOOD))
    with serve.client() as client:
        stream = client.chat.completions.create(
            model="json", messages=USER, stream=True, response_format={"type": "json_object"}
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert json.loads(text) == json.loads(GOOD)


@pytest.mark.parametrize("stream", [False, True])
def test_an_answer_invalid_after_its_repair_is_a_502_naming_the_violation(
    serve: ServeProcess, upstream_thread: ScriptedServer, stream: bool
) -> None:
    upstream_thread.script("sagg", answer='{"name": 3, "population": 1}')
    with serve.client() as client, pytest.raises(openai.APIStatusError) as info:
        client.chat.completions.create(
            model="json",
            messages=USER,
            stream=stream,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "City", "schema": City.model_json_schema()},
            },
        )
    assert info.value.status_code == 502
    error = info.value.body
    assert isinstance(error, dict) and error["code"] == "invalid_structured_output"
    assert error["param"] == "response_format"
    assert "at $.name: 3 is not of type 'string'" in error["message"]
    assert len(upstream_thread.for_model("sagg")) == 2  # the answer and one repair


def test_a_bad_schema_is_a_400_naming_it(serve: ServeProcess, upstream_thread: ScriptedServer) -> None:
    with serve.client() as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="json",
            messages=USER,
            response_format={"type": "json_schema", "json_schema": {"name": "C", "schema": {"type": "objekt"}}},
        )
    assert isinstance(info.value.body, dict) and info.value.body["param"] == "response_format.json_schema.schema"
    assert upstream_thread.requests == []


def test_langchain_with_structured_output(serve: ServeProcess, upstream_thread: ScriptedServer) -> None:
    from langchain_openai import ChatOpenAI

    upstream_thread.script("sagg", answer=GOOD)
    llm = ChatOpenAI(base_url=serve.base_url, api_key="unused", model="json", max_retries=0)
    city = llm.with_structured_output(City, method="json_schema").invoke("Describe a city.")
    assert city == City(name="Lyon", population=522000)
    assert upstream_thread.for_model("sagg")[0].body["response_format"]["json_schema"]["name"] == "City"
