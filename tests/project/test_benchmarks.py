"""Where benchmarks find their data, and the JSON their ``--json PATH`` writes (a benchmark run as a subprocess)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.data import alpaca_eval_instructions, shared_path
from moa.alpaca_eval.data import load_instructions
from moa.config import OpenAIBackendConfig
from tests.support.scripted_server import ScriptedServer


def test_benchmarks_read_the_packaged_alpaca_eval_instructions() -> None:
    packaged = [row.instruction for row in load_instructions()]
    assert len(packaged) == 805
    assert alpaca_eval_instructions() == packaged
    assert alpaca_eval_instructions(3) == packaged[:3]


def test_shared_data_is_found_under_moa_shared_data(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "arena_hard").mkdir()
    (tmp_path / "arena_hard" / "questions.jsonl").write_text("{}\n")
    monkeypatch.setenv("MOA_SHARED_DATA", str(tmp_path))
    assert shared_path("arena_hard", "questions.jsonl") == tmp_path / "arena_hard" / "questions.jsonl"


def test_missing_shared_data_is_an_error_naming_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOA_SHARED_DATA", str(tmp_path))
    with pytest.raises(FileNotFoundError, match="not found: tried .*mt_bench/question.jsonl"):
        shared_path("mt_bench", "question.jsonl")


def test_a_benchmark_writes_what_it_prints_as_json(tmp_path: Path) -> None:
    out = tmp_path / "figures" / "limiter.json"
    command = [sys.executable, "-m", "benchmarks.bench_limiter", "--waiters", "20", "--rps", "1000", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    figures = json.loads(out.read_text())
    assert figures["benchmark"] == "bench_limiter"
    assert figures["args"] == {"waiters": 20, "rps": 1000.0}
    assert {"cores", "load_average_start", "load_average_end", "python"} <= figures["machine"].keys()
    assert figures["figures"]["moa.grants_per_s"] > 0
    assert figures["figures"]["moa.cpu_s"] >= 0
    assert "moa RequestRateLimiter: 20 grants" in done.stdout


def test_bench_cost_parses_its_options_and_sums_a_turns_calls() -> None:
    from benchmarks.bench_cost import parser, turn_figures
    from moa.types import CallRecord

    args = parser().parse_args(["--turns", "2", "--max-tokens", "16", "--n", "2"])
    assert (args.turns, args.max_tokens, args.n, args.json) == (2, 16, 2, None)
    calls = [
        CallRecord(layer=1, role="proposer", agent="a", backend="local", model="m", prompt_tokens=100,
                   cached_prompt_tokens=90),
        CallRecord(layer=3, role="aggregator", agent="agg", backend="local", model="m", prompt_tokens=200,
                   cached_prompt_tokens=100),
        CallRecord(layer=2, role="proposer", agent="b", backend="local", model="m", outcome="skipped"),
    ]  # fmt: skip
    turn = turn_figures(calls, 1.5)
    assert (turn.prompt_tokens, turn.cached_tokens, turn.min_share, turn.seconds) == (300, 190, 0.5, 1.5)


async def test_bench_cost_sends_the_gemma_side_fitted_to_gemmas_rules(upstream: ScriptedServer) -> None:
    """The end-gemma side wraps the one engine's proposer: what reaches it has no system turn and alternates."""
    from benchmarks.bench_cost import GEMMA_RULES, Conformed, layout_of, parser
    from moa.types import Message, SamplingParams
    from proposers.openai_http import OpenAIProposer
    from tests.support.chat_templates import GEMMA_LIKE

    assert parser().parse_args(["--sides", "end,end-gemma"]).sides == "end,end-gemma"
    assert layout_of("end-gemma") == "end"
    upstream.script("m", answer="ok", template=GEMMA_LIKE)
    inner = OpenAIProposer("up", OpenAIBackendConfig(type="openai", base_url=upstream.base_url, model="m"))
    prompt = [Message("user", "q"), Message("system", "references"), Message("user", "q")]
    try:
        result = await Conformed(inner, GEMMA_RULES).generate(prompt, SamplingParams())
    finally:
        await inner.aclose()
    assert result.generations[0].text == "ok" and upstream.scripts["m"].refusals == 0
