"""One source of truth: the sampling fields, the request-typed SDK entry, pydantic errors as ConfigError, the
type names of the schema and the registry, the default model of a call."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from moa import Ensemble, registry
from moa.config import (
    BACKEND_TYPES,
    AgentConfig,
    AggregatorConfig,
    BackendConfig,
    SynthesizeConfig,
    config_error,
    load_config,
)
from moa.defense_config import DEFENSE_TYPES, EMBEDDING_TYPES, DefenseConfig, EmbeddingsConfig, type_names
from moa.ensemble import build_request
from moa.errors import ConfigError
from moa.sampling import MaxTokens, Stop, Temperature, TopP, sampling_params
from moa.server.choices import request_for_choice
from moa.server.schema import parse_chat_request
from moa.types import SamplingParams
from tests.support.ensembles import moa_config
from tests.support.scripted_server import ScriptedServer

USER = [{"role": "user", "content": "Hello?"}]


class _Fields(BaseModel):
    temperature: Temperature | None = None
    top_p: TopP | None = None
    max_tokens: MaxTokens | None = None
    stop: Stop | None = None


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [("temperature", 3, "must be <= 2"), ("top_p", 0, "must be > 0"), ("max_tokens", 0, "must be > 0")],
)
def test_every_schema_bounds_a_sampling_field_alike(field: str, value: Any, says: str) -> None:
    agent = {"backend": "up", field: value}
    config = moa_config("http://127.0.0.1:9/v1", [["a"]])
    config["layers"][0]["agents"][0].update(agent)
    errors = []
    for check in (
        lambda: load_config(config),
        lambda: build_request(USER, {field: value}),
        lambda: parse_chat_request({"model": "m", "messages": USER, field: value}),
        lambda: _Fields.model_validate({field: value}),
    ):
        try:
            check()
        except ValidationError as e:
            errors.append(config_error(e))
        except ConfigError as e:
            errors.append(e)
    assert len(errors) == 4
    assert all(says in str(e) and e.path is not None and e.path.endswith(field) for e in errors), errors


def test_sampling_params_reads_the_fields_a_model_declares() -> None:
    agent = AgentConfig(backend="up", temperature=0.5, top_p=0.9, max_tokens=7, seed=3)
    assert sampling_params(agent) == SamplingParams(temperature=0.5, top_p=0.9, max_tokens=7, seed=3)
    assert sampling_params(SynthesizeConfig(backend="up")) == SamplingParams()
    assert sampling_params(_Fields(stop="END")).stop == ("END",)
    assert sampling_params(_Fields(stop=[])).stop is None
    assert sampling_params(_Fields(max_tokens=5), max_tokens=9, top_p=None) == SamplingParams(max_tokens=9)


def test_sdk_stop_errors_name_the_field() -> None:
    with pytest.raises(ConfigError) as info:
        build_request(USER, {"stop": 5})
    assert info.value.path == "stop"
    assert build_request(USER, {"stop": "END"}).params.stop == ("END",)


def test_server_request_reaches_the_sdk_as_it_was_validated() -> None:
    body = {"model": "m", "messages": USER, "temperature": 0.3, "max_completion_tokens": 7, "stop": "X", "seed": 5}
    parsed = parse_chat_request({**body, "n": 2, "moa_deadline_s": 9})
    assert parsed.request.params == SamplingParams(temperature=0.3, max_tokens=7, stop=("X",), seed=5)
    first, second = request_for_choice(parsed, 0), request_for_choice(parsed, 1)
    assert first == parsed.request and (first.deadline_s, second.deadline_s) == (9, 9)
    assert second.params == SamplingParams(temperature=0.3, max_tokens=7, stop=("X",), seed=6)
    assert parsed.request.params.seed == 5  # the parsed request is not changed by its choices


async def test_arun_and_astream_request_run_a_validated_request(upstream: ScriptedServer) -> None:
    upstream.script("agg", answer="final")
    request = build_request(USER, {"max_tokens": 3, "seed": 11})
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        result = await ens.arun(request)
        pieces = [d async for d in ens.astream_request(request)]
    assert result.choices[0].message.content == "final"
    assert "".join(d.content for d in pieces) == "final" and pieces[-1].finish_reason is not None
    aggs = upstream.for_model("agg")
    assert len(aggs) == 2 and all((r.body["max_tokens"], r.body["seed"]) == (3, 11) for r in aggs)


def test_config_error_names_the_field_under_a_prefix() -> None:
    with pytest.raises(ValidationError) as info:
        AgentConfig.model_validate({"backend": "up", "n": 0, "temperature": 9})
    one = config_error(info.value, "layers[0].agents[1]")
    where = "layers[0].agents[1].temperature"
    assert (one.path, str(one)) == (where, f"{where}: must be <= 2")
    every = config_error(info.value, every=True)
    assert (every.path, str(every)) == ("temperature", "temperature: must be <= 2; n: must be >= 1")


def test_type_names_come_from_the_schema() -> None:
    assert BACKEND_TYPES == type_names(BackendConfig) == ("openai", "vllm", "torch")
    assert DEFENSE_TYPES == type_names(DefenseConfig)
    assert DEFENSE_TYPES == ("cluster-filter", "in-context-cluster", "dropout-vote", "dropout-cluster")
    assert EMBEDDING_TYPES == type_names(EmbeddingsConfig) == ("local", "openai")
    assert type_names(AggregatorConfig) == ("synthesize", "self-moa-seq")


def test_registry_implements_exactly_the_schema_types() -> None:
    assert not hasattr(registry, "register")
    for kind, names in (
        ("backend", BACKEND_TYPES),
        ("aggregator", type_names(AggregatorConfig)),
        ("defense", DEFENSE_TYPES),
    ):
        known = ", ".join(sorted(names))
        with pytest.raises(ConfigError, match=f"unknown {kind} type 'nope' \\(known: {known}\\)"):
            registry.resolve(kind, "nope")  # type: ignore[arg-type]
    assert registry.resolve("aggregator", "synthesize").__name__ == "SynthesizeAggregator"


def test_model_for_falls_back_to_the_backend_model() -> None:
    config = moa_config("http://127.0.0.1:9/v1", [["a"]])
    config["backends"]["up"]["model"] = "org/base"
    config["layers"][0]["agents"].append({"backend": "up"})
    parsed = load_config(config)
    assert parsed.model_for("up", "own") == "own"
    assert parsed.model_for("up", None) == "org/base"
    assert parsed.agent_name(0, 1) == "L1.2:base"
