"""The SDK's input checks and the ``moa`` command line (run as a real subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import yaml

from moa import Ensemble
from moa.config import describe_config, load_config
from moa.errors import ConfigError
from tests.support.ensembles import moa_config


@pytest.mark.parametrize(
    ("messages", "overrides", "expected"),
    [
        ([], {}, "messages: must be a non-empty list"),
        ([{"role": "robot", "content": "x"}], {}, "messages[0].role"),
        ([{"role": "user"}], {}, "messages[0].content: field required"),
        ([{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}], {}, "messages[1].role: the last"),
        ([{"role": "user", "content": "x"}], {"temperature": 5}, "temperature: must be <= 2"),
        ([{"role": "user", "content": "x"}], {"max_tokens": 0}, "max_tokens: must be > 0"),
        ([{"role": "user", "content": "x"}], {"temprature": 1}, "temprature: unknown field"),
    ],
)
async def test_bad_requests_name_the_field(messages, overrides, expected: str) -> None:
    async with Ensemble.from_config(moa_config("http://127.0.0.1:9/v1", [["a"]])) as ens:
        with pytest.raises(ConfigError) as info:
            await ens.acomplete(messages, **overrides)
    assert expected in str(info.value)


def _moa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "moa.cli", *args], capture_output=True, text=True, timeout=60)


@pytest.fixture
def config_file(tmp_path, upstream_sync_url: str):
    path = tmp_path / "moa.yaml"
    path.write_text(yaml.safe_dump(moa_config(upstream_sync_url, [["p1", "p2"], ["p3"]])))
    return path


def test_cli_run_prints_the_answer(config_file) -> None:
    done = _moa("run", "-c", str(config_file), "Why is the sky blue?")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "agg answer 0\n"


def test_cli_run_trace_and_json(config_file) -> None:
    done = _moa("run", "-c", str(config_file), "--trace", "hello")
    assert done.returncode == 0, done.stderr
    assert "--- proposal (layer 1, p1) ---\np1 answer 0" in done.stderr
    assert "aggregator" in done.stderr and "usage:" in done.stderr
    result = json.loads(_moa("run", "-c", str(config_file), "--json", "hello").stdout)
    assert result["object"] == "chat.completion" and result["choices"][0]["message"]["content"] == "agg answer 0"
    assert [(r["layer"], r["agent"]) for r in result["trace"]] == [(1, "p1"), (1, "p2"), (2, "p3"), (3, "aggregator")]


def test_cli_run_seed_seeds_every_call(config_file, upstream_thread) -> None:
    for _ in range(2):
        done = _moa("run", "-c", str(config_file), "--seed", "5", "hello")
        assert done.returncode == 0, done.stderr
    seeds = [(r.model, r.body.get("seed")) for r in upstream_thread.requests]
    assert seeds[:4] == seeds[4:]  # the same seeds on both runs
    assert dict(seeds)["agg"] == 5 and None not in dict(seeds).values()


def test_cli_stream(config_file) -> None:
    done = _moa("run", "-c", str(config_file), "--stream", "hello")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "agg answer 0\n"


def test_cli_errors_are_one_line_not_tracebacks(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        yaml.safe_dump(
            {**moa_config("http://127.0.0.1:9/v1", [["a"]]), "layers": [{"agents": [{"backend": "up", "n": 0}]}]}
        )
    )
    done = _moa("validate", str(bad))
    assert done.returncode == 2
    assert done.stderr.strip().startswith("error:") and "layers[0].agents[0].n: must be >= 1" in done.stderr
    assert "Traceback" not in done.stderr
    unreachable = tmp_path / "down.yaml"
    unreachable.write_text(
        yaml.safe_dump(moa_config("http://127.0.0.1:9/v1", [["a"]], backend={"retry": {"max_retries": 0}}))
    )
    done = _moa("run", "-c", str(unreachable), "hi")
    assert done.returncode == 1 and "connection failed" in done.stderr and "Traceback" not in done.stderr


def test_cli_validate_shipped_recipes() -> None:
    done = _moa("validate", "together-moa", "self-moa-seq")
    assert done.returncode == 0
    assert "together-moa: ok (together-moa: 2 layer(s), 12 proposal(s)" in done.stdout


def test_validate_prints_the_line_serve_prints() -> None:
    done = _moa("validate", "together-moa")
    summary = describe_config(load_config("together-moa"))
    assert summary == "together-moa: 2 layer(s), 12 proposal(s), aggregator synthesize"  # moa serve: serving ...
    assert done.stdout == f"together-moa: ok ({summary})\n"


async def test_astream_rejects_bad_input_before_iterating() -> None:
    async with Ensemble.from_config(moa_config("http://127.0.0.1:9/v1", [["a"]])) as ens:
        with pytest.raises(ConfigError, match="messages"):
            ens.astream([])


def test_validate_lists_every_error_of_every_config_at_once(tmp_path) -> None:
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nbackends:\n  up: {type: openai, base_url: 'http://127.0.0.1:9/v1', model: m}\n"
        "layers:\n  - agents:\n      - {backend: nope}\n      - {backend: up, n: 2}\n"
        "aggregator: {backend: missing}\nmin_proposals: 5\n"
    )
    cross = tmp_path / "cross.yaml"
    cross.write_text(
        "name: cross\nbackends:\n  up: {type: openai, base_url: 'http://127.0.0.1:9/v1', model: m}\n"
        "layers:\n  - agents:\n      - {backend: up, n: 2, name: x}\n      - {backend: up, name: x}\n"
        "aggregator: {backend: up}\nmin_proposals: 5\nmax_cost_usd: 1\n"
    )
    done = _moa("validate", str(bad), str(cross), "together-moa")
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert f"error: {bad}: 3 error(s)\n" in done.stderr and f"error: {cross}: 3 error(s)\n" in done.stderr
    for line in (
        "  layers[0].agents[0].backend: unknown backend 'nope' (known: up)",
        "  aggregator.backend: unknown backend 'missing' (known: up)",
        "  min_proposals: must be <= 3, the proposals layers[0] can produce (the sum of its agents' n)",
        "  layers[0].agents[1].name: 'x' names both this agent and layers[0].agents[0]",
        "  backends.up.prices: required when max_cost_usd is set",
    ):
        assert line in done.stderr
    assert "together-moa: ok (together-moa: 2 layer(s), 12 proposal(s)" in done.stdout  # the others still checked


def test_configs_and_validate_describe_a_recipe_alike() -> None:
    listed = {line.split()[0]: line for line in _moa("configs").stdout.splitlines()}
    shape = describe_config(load_config("together-moa")).removeprefix("together-moa: ")
    assert listed["together-moa"].split(None, 1)[1].startswith(shape + ": ")
    assert "3 layers" not in listed["together-moa"]  # the aggregator is no proposer layer
