"""A sampling field declared once (``moa.types.SamplingFields``) reaches every backend's wire, or is refused naming
the field and the backend: at config time, through the SDK and through the server.

Adding a field: give it a value in ``SAMPLES``; these tests then send it through every backend.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import openai
import pytest
from transformers import AutoTokenizer

from moa import Ensemble
from moa.config import OpenAIBackendConfig, TorchBackendConfig, VLLMBackendConfig, load_config
from moa.ensemble import build_request
from moa.errors import ConfigError, UnsupportedFieldError
from moa.sampling import OPENAI_FIELDS, VLLM_FIELDS
from moa.server.schema import parse_chat_request
from moa.types import Message, SamplingFields, SamplingParams
from proposers.embedded import resolve_model
from proposers.specdec.decode import run
from proposers.specdec.runner import Runner, sampler_of
from proposers.torch_local import TorchProposer
from tests.support.ensembles import moa_config
from tests.support.scripted_server import ScriptedServer
from tests.support.server_harness import ServeProcess, ensemble, moa_serve
from tests.support.specdec_tiny import single_thread, tiny_llama  # noqa: F401 (a fixture)

USER = [{"role": "user", "content": "Hello?"}]
EMBEDDED = "embedded:smollm2-135m-instruct"

#: a value of every declared field, as a caller gives it
SAMPLES: dict[str, Any] = {
    "temperature": 0.5,
    "top_p": 0.9,
    "max_tokens": 7,
    "stop": ["END"],
    "seed": 42,
    "frequency_penalty": 0.5,
    "presence_penalty": -0.5,
    "repetition_penalty": 1.2,
    "response_format": {"type": "json_object"},
    "top_k": 40,
    "min_p": 0.05,
    "logit_bias": {"15": 2.0},
    "reasoning_effort": "low",
}
#: an answer every sample accepts (response_format asks for a JSON object)
JSON_ANSWER = '{"answer": "final"}'
FIELDS = list(SamplingFields.model_fields)


def test_every_declared_field_has_a_sample() -> None:
    assert sorted(SAMPLES) == sorted(FIELDS), "give the new field a value in SAMPLES"


def test_the_apis_take_the_fields_their_wire_says() -> None:
    openai = {"temperature", "top_p", "max_tokens", "stop", "seed", "frequency_penalty", "presence_penalty"}
    openai |= {"response_format", "logit_bias", "reasoning_effort"}
    assert OPENAI_FIELDS == openai
    assert VLLM_FIELDS == OPENAI_FIELDS - {"reasoning_effort"} | {"repetition_penalty", "top_k", "min_p"}


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("frequency_penalty", 2.5, "must be <= 2"),
        ("presence_penalty", -3, "must be >= -2"),
        ("repetition_penalty", 0, "must be > 0"),
    ],
)
def test_every_schema_bounds_a_field_alike(field: str, value: Any, says: str) -> None:
    config = _config("http://127.0.0.1:9/v1", {field: value}, vllm_extensions=True)
    errors = []
    for check in (
        lambda: load_config(config),
        lambda: build_request(USER, {field: value}),
        lambda: parse_chat_request({"model": "m", "messages": USER, field: value}),
    ):
        with pytest.raises(ConfigError) as info:
            check()
        errors.append(info.value)
    assert [(e.path, says in str(e)) for e in errors] == [
        (f"layers[0].agents[0].{field}", True),
        (field, True),
        (field, True),
    ]


# ---- openai: the scripted upstream records every body --------------------------------------------------


def _config(base_url: str, agent: dict[str, Any], vllm_extensions: bool) -> dict[str, Any]:
    config = moa_config(base_url, [["p1"]], backend={"vllm_extensions": vllm_extensions})
    config["layers"][0]["agents"][0].update(agent)
    return config


@pytest.mark.parametrize("vllm_extensions", [False, True])
@pytest.mark.parametrize("field", FIELDS)
async def test_a_field_reaches_an_openai_backends_body(
    upstream: ScriptedServer, field: str, vllm_extensions: bool
) -> None:
    value = SAMPLES[field]
    honoured = OpenAIBackendConfig(type="openai", vllm_extensions=vllm_extensions).field_support().fields
    if field not in honoured:  # vLLM's own, to a backend that does not say it is a vLLM server
        with pytest.raises(ConfigError) as config_time:
            load_config(_config(upstream.base_url, {field: value}, vllm_extensions))
        assert config_time.value.path == f"layers[0].agents[0].{field}"
        assert "backend 'up'" in str(config_time.value) and "vllm_extensions: true" in str(config_time.value)
        async with Ensemble.from_config(_config(upstream.base_url, {}, vllm_extensions)) as ens:
            with pytest.raises(UnsupportedFieldError) as request_time:
                await ens.acomplete(USER, **{field: value})
        assert (request_time.value.field, request_time.value.backend, request_time.value.path) == (field, "up", field)
        assert upstream.requests == []
        return
    upstream.script("agg", answer=JSON_ANSWER)
    async with Ensemble.from_config(_config(upstream.base_url, {field: value}, vllm_extensions)) as ens:
        await ens.acomplete(USER)  # the agent's config sets the field
        await ens.acomplete(USER, **{field: value})  # the request sets the final answer's
    agent, _ = upstream.for_model("p1")
    assert agent.body[field] == value
    first, second = upstream.for_model("agg")
    assert "END" not in first.body["stop"] if field == "stop" else field not in first.body
    sent = second.body[field]  # the aggregator reads fenced references, so it also stops at the fences
    assert (sent[:1] if field == "stop" else sent) == value


# ---- vllm: the SamplingParams it builds (real vLLM objects; no engine starts) ---------------------------


@pytest.mark.parametrize("field", FIELDS)
def test_a_field_reaches_vllms_sampling_params(field: str) -> None:
    pytest.importorskip("vllm")
    from proposers.vllm_engine import VLLMProposer

    proposer = VLLMProposer("local", VLLMBackendConfig(type="vllm", model=EMBEDDED))
    params = SamplingParams(**{field: SAMPLES[field]})
    if field not in VLLM_FIELDS:
        with pytest.raises(UnsupportedFieldError, match=f"{field}: backend 'local'"):
            proposer.sampling_params(params, 1, room=100)
        return
    built = proposer.sampling_params(params, 1, room=100)
    if field == "logit_bias":  # vLLM keys it by token id as an int
        assert built.logit_bias == {15: 2.0}
        return
    if field == "response_format":  # vLLM enforces it with its structured outputs
        from vllm.sampling_params import StructuredOutputsParams

        assert built.structured_outputs == StructuredOutputsParams(json_object=True)
        return
    assert getattr(built, field) == SAMPLES[field]


def test_vllm_caps_max_tokens_to_the_room_the_prompt_leaves() -> None:
    pytest.importorskip("vllm")
    from proposers.vllm_engine import VLLMProposer

    proposer = VLLMProposer("local", VLLMBackendConfig(type="vllm", model=EMBEDDED))
    assert proposer.sampling_params(SamplingParams(max_tokens=500), 1, room=30).max_tokens == 30
    assert proposer.sampling_params(SamplingParams(), 1, room=30).max_tokens == 30


# ---- torch: moa's own decode loop, on a tiny random model ------------------------------------------------


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny random Llama with the embedded SmolLM2 tokenizer (for its chat template), saved as a model folder."""
    folder = tmp_path_factory.mktemp("tiny-llama")
    tokenizer = AutoTokenizer.from_pretrained(resolve_model(EMBEDDED))
    tiny_llama(0, vocab=len(tokenizer)).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


@pytest.fixture(scope="module")
async def torch_proposer(tiny_folder: Path, single_thread: None) -> AsyncIterator[TorchProposer]:  # noqa: F811
    proposer = TorchProposer("tiny", TorchBackendConfig(type="torch", model=str(tiny_folder), device="cpu"))
    yield proposer
    await proposer.aclose()


async def _torch_text(proposer: TorchProposer, **fields: Any) -> str:
    result = await proposer.generate([Message("user", "Hi")], SamplingParams(temperature=0.0, **fields))
    return result.generations[0].text


async def _torch_reaches(proposer: TorchProposer, field: str, value: Any) -> None:
    """What ``field`` does to the torch decode loop, seen in what it builds or answers."""
    params = SamplingParams(**{field: value})
    if field in ("temperature", "top_p"):
        assert getattr(sampler_of(params, "cpu"), field) == value
    elif field == "seed":
        generator = sampler_of(params, "cpu").generator
        assert generator is not None and generator.initial_seed() == value
    elif field == "max_tokens":
        runner = Runner.load("tiny", proposer.config)
        assert runner.budget([1, 2, 3], params) == value
    elif field == "stop":
        whole = await _torch_text(proposer, max_tokens=12)
        stop = whole[3:5]
        assert await _torch_text(proposer, max_tokens=12, stop=(stop,)) == whole[: whole.index(stop)]
    elif field == "repetition_penalty":
        assert sampler_of(params, "cpu").repetition_penalty == value
        runner = Runner.load("tiny", proposer.config)
        prompt = runner.encode([Message("user", "Hi")])
        plain, _ = run(runner.tokens(prompt, SamplingParams(temperature=0.0, max_tokens=64)))

        def repeats(out: list[int]) -> int:
            return sum(t in prompt or t in out[:i] for i, t in enumerate(out))

        assert repeats(plain) > 0  # unpenalized, the tiny model writes tokens it has seen
        forbidding = SamplingParams(temperature=0.0, max_tokens=64, repetition_penalty=1e6)
        assert repeats(run(runner.tokens(prompt, forbidding))[0]) == 0
    else:
        raise AssertionError(f"the torch backend declares {field}: add how it reaches the decode loop here")


@pytest.mark.parametrize("field", FIELDS)
async def test_a_field_reaches_the_torch_decode_loop_or_is_refused(torch_proposer: TorchProposer, field: str) -> None:
    value = SAMPLES[field]
    if field in torch_proposer.fields.fields:
        await _torch_reaches(torch_proposer, field, tuple(value) if field == "stop" else value)
        return
    params = SamplingParams(**{field: value})
    with pytest.raises(UnsupportedFieldError, match="torch decode loop does not implement it") as info:
        await torch_proposer.generate([Message("user", "Hi")], params)
    assert (info.value.field, info.value.backend) == (field, "tiny")
    with pytest.raises(UnsupportedFieldError):
        [d async for d in torch_proposer.stream([Message("user", "Hi")], params)]


def test_a_torch_backend_refuses_at_config_time_what_it_cannot_honour() -> None:
    config = moa_config("http://127.0.0.1:9/v1", [["a"]])
    config["backends"]["tiny"] = {"type": "torch", "model": EMBEDDED}
    config["layers"][0]["agents"].append({"backend": "tiny", "frequency_penalty": 0.5})
    with pytest.raises(ConfigError) as info:
        load_config(config)
    assert info.value.path == "layers[0].agents[1].frequency_penalty"
    assert "backend 'tiny' cannot honour this field" in str(info.value)


# ---- the server: the official openai client against moa serve -----------------------------------------


@pytest.fixture(scope="module")
def serve(upstream_sync_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    configs = [
        ensemble(upstream_sync_url, "plain", [["f1"]], "fagg"),
        ensemble(upstream_sync_url, "served-by-vllm", [["v1"]], "vagg", backend={"vllm_extensions": True}),
    ]
    with moa_serve(tmp_path_factory.mktemp("serve-fields"), configs) as server:
        yield server


@pytest.mark.parametrize("stream", [False, True])
def test_the_server_refuses_a_field_the_backend_cannot_honour_naming_both(
    serve: ServeProcess, upstream_thread: ScriptedServer, stream: bool
) -> None:
    with serve.client() as client, pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(
            model="plain", messages=USER, stream=stream, extra_body={"repetition_penalty": 1.2}
        )
    error = info.value.body
    assert isinstance(error, dict) and error["param"] == "repetition_penalty"
    assert error["message"].startswith("repetition_penalty: backend 'up' cannot honour this field")
    assert upstream_thread.requests == []


def test_the_server_passes_every_field_on(serve: ServeProcess, upstream_thread: ScriptedServer) -> None:
    fields = {**SAMPLES, "max_tokens": None, "max_completion_tokens": 7}
    upstream_thread.script("vagg", answer=JSON_ANSWER)
    with serve.client() as client:
        client.chat.completions.create(model="served-by-vllm", messages=USER, extra_body=fields)
        client.chat.completions.create(model="plain", messages=USER, frequency_penalty=0.5, presence_penalty=-0.5)
    sent = upstream_thread.for_model("vagg")[0].body
    assert {k: sent[k] for k in FIELDS if k != "stop"} == {k: v for k, v in SAMPLES.items() if k != "stop"}
    assert sent["stop"][0] == "END"  # then the fences of the references the aggregator reads
    plain = upstream_thread.for_model("fagg")[0].body
    assert (plain["frequency_penalty"], plain["presence_penalty"]) == (0.5, -0.5)
