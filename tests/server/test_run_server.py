"""issue 18's CLI and server items: ``moa run --server`` against a real ``moa serve`` (over the scripted upstream),
the access log and ``--log-level``, the default recipe of ``moa serve``, an empty ``api_key_env``, and
``--trace``'s table (start-up rows, whole model names)."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from moa import Ensemble
from moa.cli import build_parser
from moa.config import load_config
from moa.types import CallRecord
from tests.support.ensembles import moa_config
from tests.support.server_harness import ServeProcess, ensemble, moa_serve

REPO = Path(__file__).resolve().parents[2]
LONG_MODEL = "organisation-with-a-long-name/a-model-name-longer-than-its-column-v2"


def _moa(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "moa.cli", *args], capture_output=True, text=True, timeout=120, cwd=REPO,
        env={**os.environ, **(env or {})},
    )  # fmt: skip


@pytest.fixture(scope="module")
def serve(upstream_sync_url: str, tmp_path_factory) -> Iterator[ServeProcess]:
    configs = [ensemble(upstream_sync_url, "remote", [["p1", "p2"]], "agg")]
    with moa_serve(tmp_path_factory.mktemp("run-server"), configs) as server:
        yield server


def test_run_server_sends_the_prompt_to_moa_serve(serve: ServeProcess) -> None:
    done = _moa("run", "--server", serve.base_url, "What is 2 + 2?")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()  # the aggregator's answer
    assert "layer 1 proposer p1" in done.stderr and "aggregator" in done.stderr  # the server's progress chunks
    assert "starting vLLM" not in done.stderr


def test_moa_server_variable_and_trace(serve: ServeProcess) -> None:
    done = _moa("run", "--trace", "-c", "remote", "hi", env={"MOA_SERVER": serve.base_url.removesuffix("/v1")})
    assert done.returncode == 0, done.stderr
    assert re.search(r"^\s+1 proposer\s+p1 ", done.stderr, re.M), done.stderr  # the trace the server returned
    assert "timeline: 3 calls" in done.stderr


def test_run_server_names_an_unknown_ensemble(serve: ServeProcess) -> None:
    done = _moa("run", "--server", serve.base_url, "-c", "nope", "hi")
    assert done.returncode == 1
    assert "no ensemble named 'nope'" in done.stderr and "Traceback" not in done.stderr


def test_run_server_that_is_not_there() -> None:
    done = _moa("run", "--server", "http://127.0.0.1:9", "hi")
    assert done.returncode == 1 and "cannot be reached" in done.stderr and "Traceback" not in done.stderr


def test_serve_logs_one_access_line_per_request(serve: ServeProcess) -> None:
    with serve.client(timeout=30) as client:
        client.chat.completions.create(model="remote", messages=[{"role": "user", "content": "hi"}])
        client.models.list()
    serve.stop()
    lines = serve.stderr.splitlines()
    chat = [x for x in lines if "POST /v1/chat/completions 200 ensemble=remote" in x]
    assert chat, serve.stderr
    assert re.search(r"tokens=\d+ cost=- \d+\.\d\ds req_[0-9a-f]{32}$", chat[-1]), chat[-1]
    assert "moa.server.access" in chat[-1]
    assert any("GET /v1/models 200 ensemble=- tokens=- cost=- " in x for x in lines)


def test_log_level_warning_drops_the_access_lines(upstream_sync_url: str, tmp_path: Path) -> None:
    configs = [ensemble(upstream_sync_url, "quiet", [["p1"]], "agg")]
    with moa_serve(tmp_path, configs, "--log-level", "warning") as server:
        assert server.request("GET", "/v1/models")[0] == 200
        server.stop()
        assert "GET /v1/models" not in server.stderr


def test_serve_without_a_config_serves_the_default_recipe() -> None:
    from moa.commands.serve import served_configs

    args = build_parser().parse_args(["serve"])
    assert served_configs(args) == ["default"]
    assert served_configs(build_parser().parse_args(["serve", "-c", "a", "-c", "b"])) == ["a", "b"]


def test_an_empty_api_key_env_means_no_key(upstream_sync_url: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOA_API_KEY_ENV", "")
    monkeypatch.setenv("MOA_BASE_URL", upstream_sync_url)
    cfg = load_config("self-moa")
    assert all(getattr(b, "api_key_env", None) is None for b in cfg.backends.values())
    Ensemble(cfg)  # no "environment variable  is not set"
    data = moa_config(upstream_sync_url, [["p1"]], backend={"api_key_env": ""})
    assert load_config(data).backends["up"].api_key_env is None  # type: ignore[union-attr]


def test_trace_table_has_startup_rows_and_whole_model_names() -> None:
    from moa.commands.progress_view import print_calls

    calls = [CallRecord(layer=1, role="proposer", agent="L1.1", backend="up", model=LONG_MODEL, latency_s=1.5)]
    out = io.StringIO()
    print_calls(calls, out, [("local", "conversion check", 0.01), ("local", "engine start", 41.0)])
    text = out.getvalue()
    assert LONG_MODEL in text
    assert re.search(r"startup\s+local\s+engine start\s+41\.00", text), text
    assert re.search(r"proposer\s+L1\.1\s+" + re.escape(LONG_MODEL) + r"\s+0\s+0\s+1\.50", text), text


def test_moa_run_trace_prints_whole_model_names(upstream_sync_url: str, tmp_path: Path) -> None:
    path = tmp_path / "long.yaml"
    path.write_text(yaml.safe_dump(moa_config(upstream_sync_url, [[LONG_MODEL]])))
    done = _moa("run", "-c", str(path), "--trace", "hi")
    assert done.returncode == 0, done.stderr
    assert f" {LONG_MODEL} " in done.stderr
