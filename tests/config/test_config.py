"""Config validation: every error names the dotted path of the field."""

from __future__ import annotations

import copy
import json
from typing import Literal

import pytest

from moa.config import (
    BackendConfigBase,
    OpenAIBackendConfig,
    SelfMoASeqConfig,
    SynthesizeConfig,
    TorchBackendConfig,
    VLLMBackendConfig,
    builtin_configs,
    load_config,
    parse_config,
)
from moa.errors import ConfigError

BASE = {
    "name": "t",
    "backends": {"up": {"type": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m"}},
    "layers": [{"agents": [{"backend": "up"}]}, {"agents": [{"backend": "up"}, {"backend": "up"}]}],
    "aggregator": {"backend": "up"},
}


def _with(path_setter) -> dict:
    data = copy.deepcopy(BASE)
    path_setter(data)
    return data


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda d: d["layers"][1]["agents"][0].update(temperature=3), "layers[1].agents[0].temperature: must be <= 2"),
        (lambda d: d["layers"][0]["agents"][0].update(n=0), "layers[0].agents[0].n: must be >= 1"),
        (lambda d: d["layers"][1]["agents"][1].update(top_p=0), "layers[1].agents[1].top_p: must be > 0"),
        (lambda d: d["layers"][0]["agents"][0].update(tempurature=1), "layers[0].agents[0].tempurature: unknown field"),
        (
            lambda d: d["layers"][0]["agents"][0].update(backend="nope"),
            "layers[0].agents[0].backend: unknown backend 'nope'",
        ),
        (lambda d: d["aggregator"].update(type="self-moa-seq", window=1), "aggregator.window: must be >= 2"),
        (lambda d: d["aggregator"].update(type="vote"), "aggregator.type: must be one of"),
        (lambda d: d["aggregator"].update(window=3), "aggregator.window: unknown field"),  # synthesize has none
        (
            lambda d: d["aggregator"].update(type="synthesize", temperature=5),
            "aggregator.temperature: must be <= 2",
        ),
        (lambda d: d.update(references={"at": "front"}), "references.at: must be one of"),
        (lambda d: d["backends"]["up"].update(type="grpc"), "backends.up: unknown type 'grpc'"),
        (lambda d: d["backends"]["up"].update(base_url="localhost:80"), "backends.up.base_url: must be an http(s) URL"),
        (
            lambda d: (
                d["backends"]["up"]["rate_limit"] if False else d["backends"]["up"].update(rate_limit={"rps": -1})
            ),
            "backends.up.rate_limit.rps: must be > 0",
        ),
        (lambda d: d["backends"]["up"].pop("model"), "layers[0].agents[0].model: required"),
        (lambda d: d.update(layers=[]), "layers: must have at least 1 item"),
        (lambda d: d.pop("aggregator"), "aggregator: field required"),
    ],
)
def test_errors_name_the_field(mutate, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_with(mutate))
    assert expected in str(info.value)
    assert info.value.path is not None and str(info.value).startswith(info.value.path)


def test_all_errors_reported_together() -> None:
    def two(d):
        d["layers"][0]["agents"][0]["temperature"] = 9
        d["aggregator"]["max_tokens"] = 0

    with pytest.raises(ConfigError) as info:
        parse_config(_with(two))
    assert "layers[0].agents[0].temperature" in str(info.value) and "aggregator.max_tokens" in str(info.value)


def test_yaml_json_and_env_expansion(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TEST_MOA_URL", "http://127.0.0.1:1234/v1")
    data = _with(lambda d: d["backends"]["up"].update(base_url="${TEST_MOA_URL}", model="${TEST_MOA_MODEL:-fallback}"))
    (tmp_path / "c.json").write_text(json.dumps(data))
    cfg = load_config(tmp_path / "c.json")
    assert cfg.backends["up"].base_url == "http://127.0.0.1:1234/v1"
    assert cfg.backends["up"].model == "fallback"
    (tmp_path / "bad.yaml").write_text("name: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "bad.yaml")
    data["backends"]["up"]["base_url"] = "${TEST_MOA_UNSET_VAR}"
    with pytest.raises(ConfigError, match="backends.up.base_url: environment variable TEST_MOA_UNSET_VAR is not set"):
        parse_config(data)


def test_shipped_recipes_validate() -> None:
    names = set(builtin_configs())
    assert {"together-moa", "moa-lite", "self-moa", "self-moa-seq"} <= names
    together = load_config("together-moa")
    assert [len(layer.agents) for layer in together.layers] == [6, 6]
    assert together.aggregator.model == "Qwen/Qwen1.5-110B-Chat"
    assert load_config("moa-lite").aggregator.model == "Qwen/Qwen1.5-72B-Chat"
    assert load_config("self-moa").layers[0].agents[0].n == 6
    assert load_config("self-moa-seq").aggregator.type == "self-moa-seq"


@pytest.mark.parametrize(
    ("mutate", "path", "message"),
    [
        (lambda d: d["layers"][1].update(min_proposals=3), "layers[1].min_proposals", "must be <= 2"),
        (lambda d: d.update(min_proposals=2), "min_proposals", "must be <= 1, the proposals layers[0] can produce"),
        (
            lambda d: (
                d["layers"][1]["agents"][1].update(name="same") or d["layers"][0]["agents"][0].update(name="same")
            ),
            "layers[1].agents[1].name",
            "'same' names both this agent and layers[0].agents[0]",
        ),
        (  # an explicit name equal to another agent's derived one
            lambda d: d["layers"][1]["agents"][0].update(name="L2.2:m"),
            "layers[1].agents[0].name",
            "'L2.2:m' names both this agent and layers[1].agents[1]",
        ),
        (  # an agent with n > 1 names its samples s#1, s#2
            lambda d: (
                d["layers"][0]["agents"][0].update(name="s", n=2) or d["layers"][1]["agents"][1].update(name="s#2")
            ),
            "layers[1].agents[1].name",
            "NAME#1, NAME#2",
        ),
    ],
)
def test_configs_that_fail_every_request_are_refused_at_load(mutate, path: str, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(_with(mutate))
    assert info.value.path == path and message in str(info.value)


def test_min_proposals_and_names_that_can_hold_load() -> None:
    ok = _with(lambda d: d.update(min_proposals=2) or d["layers"][0].update(min_proposals=1))
    assert parse_config(ok).min_proposals == 2  # layer 0 sets its own; layer 1's two agents can give two
    sampled = _with(lambda d: d["layers"][0]["agents"][0].update(n=3) or d["layers"][0].update(min_proposals=3))
    assert parse_config(sampled).layers[0].min_proposals == 3
    cfg = parse_config(BASE)
    names = [cfg.agent_name(li, ai) for li, layer in enumerate(cfg.layers) for ai in range(len(layer.agents))]
    assert names == ["L1.1:m", "L2.1:m", "L2.2:m"]


def test_the_aggregator_type_picks_its_class_and_defaults_to_synthesize() -> None:
    assert type(parse_config(BASE).aggregator) is SynthesizeConfig
    seq = parse_config(_with(lambda d: d["aggregator"].update(type="self-moa-seq", window=4))).aggregator
    assert type(seq) is SelfMoASeqConfig and seq.window == 4
    assert SelfMoASeqConfig(backend="up").window == 3
    with pytest.raises(ConfigError) as info:
        parse_config(_with(lambda d: d["aggregator"].update(type="vote")))
    assert str(info.value) == "aggregator.type: must be one of 'synthesize' or 'self-moa-seq'"


def test_every_backend_type_declares_what_the_engine_asks_of_it() -> None:
    """``endpoint`` and ``one_call_for_n`` are each type's to define: a type that leaves one out cannot be made,
    and nothing asks a backend for a field it may not have."""

    class Half(BackendConfigBase):
        type: Literal["half"]

        @property
        def endpoint(self) -> str | None:
            return None

    with pytest.raises(TypeError, match="one_call_for_n"):
        Half(type="half")
    remote = OpenAIBackendConfig(type="openai", base_url="http://127.0.0.1:9/v1/", supports_n=False)
    assert (remote.endpoint, remote.one_call_for_n, remote.in_process) == ("http://127.0.0.1:9/v1", False, False)
    assert OpenAIBackendConfig(type="openai").one_call_for_n
    for local in (VLLMBackendConfig(type="vllm", model="m"), TorchBackendConfig(type="torch", model="m")):
        assert (local.endpoint, local.one_call_for_n, local.in_process) == (None, True, True)
