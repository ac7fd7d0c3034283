"""Structured outputs through the SDK (``response_format``), against the scripted upstream: what reaches the
aggregator and the proposers, the schema check, one repair call, then ``InvalidStructuredOutputError``."""

from __future__ import annotations

import json
from typing import Any

import pytest
from pydantic import BaseModel

from moa import Ensemble
from moa.config import load_config
from moa.errors import ConfigError, InvalidStructuredOutputError, UnsupportedFieldError
from moa.repair import REPAIR_PROMPT
from moa.types import ChatRequest, Message, SamplingParams
from tests.support.ensembles import moa_config
from tests.support.scripted_server import ScriptedServer

USER = [{"role": "user", "content": "Describe a city."}]
REPAIR_OPENING = REPAIR_PROMPT.split("{problem}")[0]


class City(BaseModel):
    name: str
    population: int


SCHEMA = {
    "type": "json_schema",
    "json_schema": {"name": "City", "schema": City.model_json_schema(), "strict": True},
}
GOOD = '{"name": "Lyon", "population": 522000}'
BAD = '{"name": "Lyon", "population": "many"}'


def repaired_by(first: str, then: str) -> Any:
    """An aggregator that answers ``first``, and ``then`` to a repair call."""

    def answer(model: str, messages: list[dict[str, str]], index: int) -> str:
        return then if messages[-1]["content"].startswith(REPAIR_OPENING) else first

    return answer


async def test_a_pydantic_model_reaches_the_aggregator_as_a_strict_schema_and_comes_back_parsed(
    upstream: ScriptedServer,
) -> None:
    upstream.script("agg", answer=GOOD)
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1", "p2"]])) as ens:
        result = await ens.acomplete(USER, response_format=City)
    assert result.parsed == City(name="Lyon", population=522000)
    (agg,) = upstream.for_model("agg")
    sent = agg.body["response_format"]
    assert sent["type"] == "json_schema" and sent["json_schema"]["name"] == "City" and sent["json_schema"]["strict"]
    schema = sent["json_schema"]["schema"]
    assert schema["required"] == ["name", "population"] and schema["additionalProperties"] is False
    assert all("response_format" not in r.body for r in upstream.for_model("p1") + upstream.for_model("p2"))
    assert [r.step for r in result.trace if r.role == "aggregator"] == [None]


async def test_structured_proposers_answer_in_the_format_too(upstream: ScriptedServer) -> None:
    upstream.script("agg", answer=GOOD)
    config = moa_config(upstream.base_url, [["p1"], ["p2"]], structured={"proposers": True})
    async with Ensemble.from_config(config) as ens:
        result = await ens.acomplete(USER, response_format=SCHEMA)
    assert result.parsed == json.loads(GOOD)  # a dict format: the decoded JSON
    for model in ("p1", "p2", "agg"):
        assert upstream.for_model(model)[0].body["response_format"] == SCHEMA


async def test_an_invalid_answer_gets_one_repair_call_quoting_the_first_violation(upstream: ScriptedServer) -> None:
    upstream.script("agg", answer=repaired_by(BAD, GOOD))
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        result = await ens.acomplete(USER, response_format=City)
    assert result.parsed == City(name="Lyon", population=522000)
    first, repair = upstream.for_model("agg")
    problem = repair.messages[-1]["content"]
    assert "at $.population: 'many' is not of type 'integer'" in problem
    assert repair.messages[-2] == {"role": "assistant", "content": BAD}
    assert repair.body["response_format"] == first.body["response_format"]  # the repair is held to it too
    assert [r.step for r in result.trace if r.role == "aggregator"] == [None, "repair"]


async def test_an_answer_still_invalid_after_the_repair_is_an_error_naming_it(upstream: ScriptedServer) -> None:
    upstream.script("agg", answer="Lyon is a city.")
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        with pytest.raises(InvalidStructuredOutputError) as info:
            await ens.acomplete(USER, response_format=City)
    assert "the answer is not valid JSON" in str(info.value) and "after one repair call" in str(info.value)
    assert info.value.param == "response_format"
    assert len(upstream.for_model("agg")) == 2
    assert info.value.trace is not None and [r.step for r in info.value.trace if r.role == "aggregator"] == [
        None,
        "repair",
    ]


async def test_json_object_asks_for_an_object(upstream: ScriptedServer) -> None:
    upstream.script("agg", answer="[1, 2]")
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        with pytest.raises(InvalidStructuredOutputError, match="JSON but not an object"):
            await ens.acomplete(USER, response_format={"type": "json_object"})


async def test_a_stream_with_a_format_sends_only_the_checked_answer(upstream: ScriptedServer) -> None:
    upstream.script("agg", answer=repaired_by(BAD, GOOD))
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        deltas = [d async for d in ens.astream(USER, response_format=City)]
    assert "".join(d.content for d in deltas) == GOOD  # the invalid first answer never reached the stream
    assert deltas[-1].finish_reason == "stop" and deltas[-1].trace is not None
    assert [r.step for r in deltas[-1].trace if r.role == "aggregator"] == [None, "repair"]


async def test_a_stream_without_a_format_streams_as_before(upstream: ScriptedServer) -> None:
    upstream.script("agg", answer="one two three")
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        deltas = [d.content async for d in ens.astream(USER) if d.content]
    assert deltas == ["one", " two", " three"]
    assert upstream.for_model("agg")[0].body["stream"] is True


async def test_a_format_in_the_aggregators_config_is_checked_too(upstream: ScriptedServer) -> None:
    upstream.script("agg", answer="not json")
    config = moa_config(upstream.base_url, [["p1"]], aggregator_extra={"response_format": {"type": "json_object"}})
    async with Ensemble.from_config(config) as ens:
        with pytest.raises(InvalidStructuredOutputError):
            await ens.acomplete(USER)


def test_a_bad_schema_is_refused_naming_it() -> None:
    config = moa_config("http://127.0.0.1:9/v1", [["p1"]])
    config["aggregator"]["response_format"] = {"type": "json_schema", "json_schema": {"name": "x", "schema": []}}
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert info.value.path == "aggregator.response_format.json_schema.schema"


async def test_the_torch_backend_refuses_a_response_format_naming_itself(upstream: ScriptedServer) -> None:
    config = moa_config(upstream.base_url, [["p1"]])
    config["backends"]["tiny"] = {"type": "torch", "model": "embedded:smollm2-135m-instruct"}
    config["aggregator"] = {"backend": "tiny"}
    async with Ensemble.from_config(config) as ens:
        with pytest.raises(UnsupportedFieldError) as info:
            await ens.acomplete(USER, response_format=City)
    assert (info.value.field, info.value.backend) == ("response_format", "tiny")
    assert upstream.requests == []
    proposers_too = moa_config(upstream.base_url, [["p1"]], structured={"proposers": True})
    proposers_too["backends"]["tiny"] = config["backends"]["tiny"]
    proposers_too["layers"][0]["agents"].append({"backend": "tiny"})
    async with Ensemble.from_config(proposers_too) as ens:
        with pytest.raises(UnsupportedFieldError, match="backend 'tiny'"):
            await ens.acomplete(USER, response_format={"type": "json_object"})


async def test_the_torch_backend_refuses_logprobs_naming_itself(upstream: ScriptedServer) -> None:
    config = moa_config(upstream.base_url, [["p1"]])
    config["backends"]["tiny"] = {"type": "torch", "model": "embedded:smollm2-135m-instruct"}
    config["aggregator"] = {"backend": "tiny"}
    request = ChatRequest([Message("user", "hi")], SamplingParams(logprobs=0))
    async with Ensemble.from_config(config) as ens:
        with pytest.raises(UnsupportedFieldError) as info:
            await ens.arun(request)
    assert (info.value.field, info.value.backend) == ("logprobs", "tiny")
    assert "does not return log-probabilities" in str(info.value) and upstream.requests == []
