"""``moa alpaca-eval evaluate`` against a scripted judge whose preferences the test decides: the win rate, the
LC win rate, the recorded order of the two outputs, failures, and the annotations read by alpaca_eval."""

from __future__ import annotations

import io
import json
import math
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from moa.alpaca_eval.data import instruction_difficulty, load_outputs
from moa.alpaca_eval.evaluate import EvaluateOptions, evaluate
from moa.alpaca_eval.judge import second_preferred_from_logprobs, second_preferred_from_text
from moa.alpaca_eval.lc import GLMWeights, length_features, predict_win_rate
from moa.errors import ConfigError
from tests.support.ensembles import moa_config
from tests.support.scripted_server import ScriptedServer

N = 40
N_LC = 120  # enough instructions for the length-controlled GLM (at least 100)
_ANSWER = re.compile(r"<answer_([ab])>\n(.*?)\n</answer_\1>", re.S)
_MODEL = re.compile(r"MODEL-(\d+)")


def _submission(tmp_path: Path, lengths: list[int] | None = None, n: int = N) -> Path:
    reference = load_outputs()[:n]
    lengths = lengths or [40] * n
    rows = [{"instruction": r.instruction, "output": f"MODEL-{k} " + "x" * lengths[k], "generator": "sub",
             "dataset": r.dataset} for k, r in enumerate(reference)]  # fmt: skip
    path = tmp_path / "model_outputs.json"
    path.write_text(json.dumps(rows))
    return path


def _read_prompt(messages: list[dict[str, str]]) -> tuple[int, str]:
    """(k of the model's output, the letter the model's output is shown under)."""
    answers = dict(_ANSWER.findall(messages[-1]["content"]))
    letter = "A" if "MODEL-" in answers["a"] else "B"
    return int(_MODEL.search(answers[letter.lower()]).group(1)), letter


def every_fourth_wins(model: str, messages: list[dict[str, str]], index: int) -> str:
    k, letter = _read_prompt(messages)
    return letter if k % 4 == 0 else {"A": "B", "B": "A"}[letter]


def _judge_config(base_url: str) -> dict:
    return moa_config(base_url, [["judge"]], aggregator="judge")


@pytest.mark.parametrize(
    ("text", "expected"),
    [("A", 0.0), ("B.", 1.0), ("**B**", 1.0), ("<answer_a>", 0.0), ("Answer B is better", 1.0),
     ("Both are fine.", None), ("a good question", None)],
)  # fmt: skip
def test_verdict_from_text(text: str, expected: float | None) -> None:
    assert second_preferred_from_text(text) == expected


def test_preference_from_logprobs_uses_the_first_position_led_by_a_letter() -> None:
    positions = ((("**", -0.05), (" A", -4.0)), (("B", math.log(0.6)), (" A", math.log(0.3)), ("C", math.log(0.1))))
    assert second_preferred_from_logprobs(positions) == pytest.approx(0.6 / 0.9)
    assert second_preferred_from_logprobs(((("**", -0.05), ("A", math.log(0.01)), ("B", math.log(0.03))),)) == (
        pytest.approx(0.75)
    )
    assert second_preferred_from_logprobs(((("The", -0.1), ("Both", -2.0)),)) is None


async def test_verdicts_give_the_scripted_win_rate(upstream: ScriptedServer, tmp_path) -> None:
    upstream.script("judge", answer=every_fourth_wins)
    submission = _submission(tmp_path)
    report = await evaluate(EvaluateOptions(submission, _judge_config(upstream.base_url)), io.StringIO())
    assert report.judged == report.total == N and not report.failures and report.from_logprobs == 0
    assert report.order == "both" and report.judgements == 2 * N == len(upstream.for_model("judge"))
    assert report.win_rate == pytest.approx(25.0) and report.discrete_win_rate == pytest.approx(25.0)
    assert report.position_a_share == pytest.approx(0.5) and report.consistent == N
    low, high = report.win_rate_ci95
    assert low < 25.0 < high and high - low < 40
    assert report.lc is None and "at least 100" in (report.lc_note or "")  # 40 instructions: no GLM
    assert not report.comparable and "not comparable to the leaderboard" in report.judge_note

    annotations = json.loads(report.annotations.read_text())
    assert report.annotations == tmp_path / "model_outputs.annotations.json"
    requests = {r.messages[-1]["content"]: r for r in upstream.for_model("judge")}
    for row in annotations:  # each pair was shown both ways, and each order is recorded as the judge saw it
        assert sorted(j["model_position"] for j in row["judgements"]) == ["A", "B"]
        for judgement in row["judgements"]:
            letter = judgement["model_position"].lower()
            shown = next(
                t for t in requests if row["instruction"] in t and dict(_ANSWER.findall(t))[letter] == row["output_2"]
            )
            assert requests[shown].body["logprobs"] is True and requests[shown].body["temperature"] == 0.0

    winrate = pytest.importorskip("alpaca_eval.metrics").get_winrate(annotations)  # alpaca_eval reads them alike
    assert winrate["win_rate"] == pytest.approx(report.win_rate)
    assert winrate["standard_error"] == pytest.approx(report.standard_error)

    again = await evaluate(EvaluateOptions(submission, _judge_config(upstream.base_url)), io.StringIO())
    assert again.win_rate == report.win_rate and len(upstream.for_model("judge")) == 2 * N  # resumed


async def test_balanced_order_shows_exactly_half_of_the_pairs_each_way(upstream: ScriptedServer, tmp_path) -> None:
    upstream.script("judge", answer=every_fourth_wins)
    submission = _submission(tmp_path)
    options = EvaluateOptions(submission, _judge_config(upstream.base_url), seed=1, order="balanced")
    report = await evaluate(options, io.StringIO())
    assert report.judgements == N == len(upstream.for_model("judge")) and report.consistent is None
    assert report.win_rate == pytest.approx(25.0)
    positions = [row["judgements"][0]["model_position"] for row in json.loads(report.annotations.read_text())]
    assert positions.count("A") == N // 2  # balanced, not coin flips
    with pytest.raises(ConfigError, match="different seed"):
        await evaluate(EvaluateOptions(submission, _judge_config(upstream.base_url), seed=2, order="balanced"),
                       io.StringIO())  # fmt: skip
    with pytest.raises(ConfigError, match="different seed and order"):
        await evaluate(EvaluateOptions(submission, _judge_config(upstream.base_url)), io.StringIO())
    other = await evaluate(
        EvaluateOptions(submission, _judge_config(upstream.base_url), seed=2, order="balanced",
                        annotations=tmp_path / "s2.json"), io.StringIO(),
    )  # fmt: skip
    seed2 = [r["judgements"][0]["model_position"] for r in json.loads((tmp_path / "s2.json").read_text())]
    flipped = [a != b for a, b in zip(positions, seed2, strict=True)]
    assert other.win_rate == pytest.approx(25.0) and seed2.count("A") == N // 2 and 5 < sum(flipped) < 35


async def test_a_judge_that_always_answers_a_is_shown_as_biased_and_few_rows_get_no_lc(
    upstream: ScriptedServer, tmp_path
) -> None:
    upstream.script("judge", answer="A")  # what SmolLM2-135M did: position A, every time
    submission = _submission(tmp_path)
    report = await evaluate(EvaluateOptions(submission, _judge_config(upstream.base_url), limit=3), io.StringIO())
    assert report.judged == 3 and report.judgements == 6
    assert report.win_rate == pytest.approx(50.0)  # both orders: its bias cancels instead of deciding
    assert report.position_a_share == 1.0 and report.consistent == 0
    assert report.lc is None and report.lc_note is not None and "3 instruction(s) judged" in report.lc_note
    figures = report.summary()
    assert figures["length_controlled_winrate"] is None and figures["lc_note"] == report.lc_note
    assert "chose answer A in 100% of its verdicts" in figures["position_bias_warning"]
    assert figures["comparable_to_leaderboard"] is False


async def test_logprobs_give_the_glm_the_script_implies(upstream: ScriptedServer, tmp_path) -> None:
    rng = np.random.default_rng(5)
    lengths = [int(x) for x in rng.integers(20, 3000, N_LC)]
    submission = _submission(tmp_path, lengths, n=N_LC)
    reference = load_outputs()[:N_LC]
    difficulty = np.array([instruction_difficulty()[r.instruction] for r in reference])
    model_len = [len(f"MODEL-{k} ") + lengths[k] for k in range(N_LC)]
    truth = GLMWeights(length=-1.1, difficulty=0.9, baseline=0.4)
    x = length_features(model_len, [len(r.output) for r in reference])
    p_model = 1 / (1 + np.exp(-(truth.length * x + truth.difficulty * difficulty + truth.baseline)))

    def top_logprobs(messages: list[dict[str, str]]) -> list[tuple[str, float]]:
        k, letter = _read_prompt(messages)
        other = {"A": "B", "B": "A"}[letter]
        top = [(letter, math.log(p_model[k])), (other, math.log(1 - p_model[k])), ("**", math.log(1e-4))]
        return sorted(top, key=lambda t: -t[1])

    upstream.script("judge", answer="A", top_logprobs=top_logprobs)
    report = await evaluate(EvaluateOptions(submission, _judge_config(upstream.base_url)), io.StringIO())
    assert report.from_logprobs == 2 * N_LC and not report.failures
    assert report.win_rate == pytest.approx(100 * p_model.mean(), abs=1e-6)
    assert report.lc is not None
    assert report.lc.weights.length == pytest.approx(truth.length, abs=1e-3)
    assert report.lc.win_rate == pytest.approx(predict_win_rate(truth, difficulty), abs=1e-3)
    assert abs(report.lc.win_rate - report.win_rate) > 1  # length control moved the figure


async def test_unreadable_verdicts_are_listed_and_judged_again_next_run(upstream: ScriptedServer, tmp_path) -> None:
    def stubborn(model: str, messages: list[dict[str, str]], index: int) -> str:
        k, _ = _read_prompt(messages)
        return "Both are fine." if k in (3, 17) else every_fourth_wins(model, messages, index)

    upstream.script("judge", answer=stubborn)
    options = EvaluateOptions(_submission(tmp_path), _judge_config(upstream.base_url), concurrency=4)
    first = await evaluate(options, io.StringIO())
    assert [f.index for f in first.failures] == [3, 17] and "names neither A nor B" in first.failures[0].error
    assert first.judged == N - 2
    upstream.script("judge", answer=every_fourth_wins)
    asked = len(upstream.for_model("judge"))
    second = await evaluate(options, io.StringIO())
    assert not second.failures and second.judged == N and second.win_rate == pytest.approx(25.0)
    assert len(upstream.for_model("judge")) - asked == 4  # only the two failed pairs were asked again (both orders)


async def test_rows_outside_the_reference_are_named(upstream: ScriptedServer, tmp_path) -> None:
    path = tmp_path / "model_outputs.json"
    path.write_text(json.dumps([{"instruction": "not an AlpacaEval instruction", "output": "x", "generator": "g"}]))
    with pytest.raises(
        ConfigError, match=r"model_outputs.json\[0\].instruction: this instruction is not in the reference"
    ):
        await evaluate(EvaluateOptions(path, _judge_config(upstream.base_url)), io.StringIO())
    path.write_text(json.dumps([{"instruction": "x", "generator": "g"}]))
    with pytest.raises(ConfigError, match=r"model_outputs.json\[0\].output: field required"):
        await evaluate(EvaluateOptions(path, _judge_config(upstream.base_url)), io.StringIO())


def test_cli_evaluate_warns_of_a_biased_judge_and_gives_no_lc_below_100(
    upstream_thread: ScriptedServer, tmp_path
) -> None:
    upstream_thread.script("judge", answer="A")
    config = tmp_path / "judge.yaml"
    config.write_text(yaml.safe_dump(_judge_config(upstream_thread.base_url)))
    args = [sys.executable, "-m", "moa.cli", "alpaca-eval", "evaluate", str(_submission(tmp_path)), "-c", str(config)]
    done = subprocess.run([*args, "--limit", "3"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "judge up:judge is not one of alpaca_eval's annotators: not comparable to the leaderboard" in out
    assert "position bias: 100% of the verdicts chose answer A" in out and "warning: the judge chose answer A" in out
    assert "win rate: 50.00 ± 0.00 (95% bootstrap interval 50.00-50.00" in out
    assert "no length-controlled win rate: 3 instruction(s) judged" in out
    assert not re.search(r"^length-controlled win rate: ", out, re.M)


def test_cli_evaluate_prints_the_figures(upstream_thread: ScriptedServer, tmp_path) -> None:
    upstream_thread.script("judge", answer=every_fourth_wins)
    config = tmp_path / "judge.yaml"
    config.write_text(yaml.safe_dump(_judge_config(upstream_thread.base_url)))
    submission = _submission(tmp_path, n=N_LC)
    args = [sys.executable, "-m", "moa.cli", "alpaca-eval", "evaluate", str(submission), "-c", str(config)]
    done = subprocess.run([*args, "--json", "--limit", "100"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    figures = json.loads(done.stdout)
    assert figures["judged"] == 100 and figures["win_rate"] == pytest.approx(25.0)
    assert figures["judge"] == "up:judge" and figures["length_controlled_winrate"] is not None
    assert figures["lc_note"] is None and figures["position_bias_warning"] is None
    text = subprocess.run([*args, "--limit", "100"], capture_output=True, text=True, timeout=120)
    assert text.returncode == 0 and "win rate: 25.00 ± " in text.stdout
    assert "length-controlled win rate: " in text.stdout
    bad = subprocess.run([*args, "--judge-backend", "nope"], capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2 and "--judge-backend: unknown backend 'nope' (known: up)" in bad.stderr
