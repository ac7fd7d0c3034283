"""Structured outputs through the Responses API: ``text.format`` becomes the chat request's ``response_format``, so
``client.responses.parse(text_format=...)`` gets the checked object, and a bad answer gets the same repair and 502."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import openai
import pytest
from pydantic import BaseModel

from moa.repair import REPAIR_PROMPT
from tests.support.scripted_server import ScriptedServer
from tests.support.server_harness import ServeProcess, ensemble, moa_serve

GOOD = '{"name": "Lyon", "population": 522000}'
REPAIR_OPENING = REPAIR_PROMPT.split("{problem}")[0]


class City(BaseModel):
    name: str
    population: int


def repaired_by(first: str, then: str) -> Callable[[str, list[dict[str, str]], int], str]:
    def answer(model: str, messages: list[dict[str, str]], index: int) -> str:
        return then if messages[-1]["content"].startswith(REPAIR_OPENING) else first

    return answer


@pytest.fixture(scope="module")
def serve(upstream_sync_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    directory = tmp_path_factory.mktemp("responses-structured")
    store = f"sqlite:///{directory / 'responses.sqlite3'}"
    with moa_serve(directory, [ensemble(upstream_sync_url, "json", [["s1"]], "sagg")], "--response-store", store) as s:
        yield s


def test_responses_parse_gets_the_checked_object(serve: ServeProcess, upstream_thread: ScriptedServer) -> None:
    upstream_thread.script("sagg", answer=repaired_by('{"name": "Lyon"}', GOOD))
    with serve.client() as client:
        response = client.responses.parse(model="json", input="Describe a city.", text_format=City)
    assert response.output_parsed == City(name="Lyon", population=522000)
    first, repair = upstream_thread.for_model("sagg")
    sent = first.body["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "City"
    assert sent["json_schema"]["schema"]["required"] == ["name", "population"]
    assert "'population' is a required property" in repair.messages[-1]["content"]
    assert response.text is not None and response.text.format.type == "json_schema"  # echoed as sent


def test_json_object_streamed_sends_the_checked_answer(serve: ServeProcess, upstream_thread: ScriptedServer) -> None:
    upstream_thread.script("sagg", answer=repaired_by("Lyon, 522000 people", GOOD))
    with serve.client() as client:
        with client.responses.stream(model="json", input="hi", text={"format": {"type": "json_object"}}) as stream:
            final = stream.get_final_response()
    assert json.loads(final.output_text) == {"name": "Lyon", "population": 522000}
    assert upstream_thread.for_model("sagg")[0].body["response_format"] == {"type": "json_object"}


def test_an_answer_that_stays_invalid_is_502_invalid_structured_output(
    serve: ServeProcess, upstream_thread: ScriptedServer
) -> None:
    upstream_thread.script("sagg", answer="not json at all")
    with serve.client() as client, pytest.raises(openai.APIStatusError) as e:
        client.responses.create(model="json", input="hi", text={"format": {"type": "json_object"}})
    assert e.value.status_code == 502 and e.value.body["code"] == "invalid_structured_output"  # type: ignore[index]


@pytest.mark.parametrize(
    ("fmt", "param"),
    [
        ({"type": "yaml"}, "text.format.type"),
        ({"type": "json_schema", "name": "x", "schema": {"type": 3}}, "text.format.schema"),
        ({"type": "json_schema", "name": "x", "schema": {}, "strictly": True}, "text.format.strictly"),
        ({"type": "json_schema", "schema": {}}, "text.format.name"),
    ],
)
def test_a_bad_format_is_400_naming_it_in_the_responses_terms(
    serve: ServeProcess, fmt: dict[str, object], param: str
) -> None:
    body = json.dumps({"model": "json", "input": "hi", "text": {"format": fmt}}).encode()
    status, _, raw = serve.request("POST", "/v1/responses", body, {"Content-Type": "application/json"})
    assert status == 400 and json.loads(raw)["error"]["param"] == param, raw
