"""The length-controlled win rate: the prediction step against the published leaderboard, and the GLM fit."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from moa.alpaca_eval.data import instruction_difficulty, load_instructions
from moa.alpaca_eval.lc import (
    GLMWeights,
    fit_logistic,
    length_controlled_win_rate,
    length_features,
    predict_win_rate,
    read_official_weights,
)

SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "alpaca_eval"
WEIGHTS = SHARED / "lc_glm_weights_length_controlled_v1_baseline_gpt4_1106_preview.csv"
BASELINE = "gpt4_1106_preview"
#: AlpacaEval 2.0's leaderboard as the alpaca_eval package ships it
LEADERBOARD = "leaderboards/data_AlpacaEval_2/weighted_alpaca_eval_gpt4_turbo_leaderboard.csv"
#: leaderboard rows written before their weights were refit (the weights file and the row disagree upstream)
REFIT_AFTER_THE_ROW = {"dbrx-instruct", "NullModel"}


@pytest.fixture(scope="module")
def official() -> dict[str, GLMWeights]:
    return read_official_weights(WEIGHTS)


@pytest.fixture(scope="module")
def difficulty() -> np.ndarray:
    by_text = instruction_difficulty()  # the copy shipped in moa/data
    return np.array([by_text[i.instruction] for i in load_instructions()])


def _lc(official: dict[str, GLMWeights], difficulty: np.ndarray, model: str) -> float:
    return predict_win_rate(official[model].minus(official[BASELINE]), difficulty)


@pytest.mark.parametrize(
    ("model", "published"),
    [
        ("Together-MoA", 65.38),
        ("gpt-4o-2024-05-13", 57.46),
        ("Together-MoA-Lite", 59.14),
        ("gpt-4o-mini-2024-07-18", 50.73),
        ("Meta-Llama-3-70B-Instruct", 34.42),
        ("gpt4_0613", 30.18),
        ("SelfMoA_gemma-2-9b-it-WPO-HB", 78.54),
        (BASELINE, 50.00),
    ],
)
def test_reproduces_published_lc_win_rates(official, difficulty, model: str, published: float) -> None:
    assert abs(_lc(official, difficulty, model) - published) <= 0.01


def test_reproduces_every_leaderboard_row_with_805_outputs(official, difficulty) -> None:
    alpaca_eval = pytest.importorskip("alpaca_eval")
    board = pd.read_csv(Path(alpaca_eval.__file__).parent / LEADERBOARD, index_col=0)
    rows = board[(board["n_total"] == 805) & board.index.isin(list(official))].drop(list(REFIT_AFTER_THE_ROW))
    assert len(rows) == 186
    errors = {m: abs(_lc(official, difficulty, m) - rows.loc[m, "length_controlled_winrate"]) for m in rows.index}
    worst = max(errors, key=errors.get)
    assert errors[worst] <= 0.01, (worst, errors[worst])


def test_fit_recovers_the_weights_that_generated_the_preferences(difficulty) -> None:
    rng = np.random.default_rng(7)
    model_len = rng.integers(100, 4000, difficulty.size)
    reference_len = rng.integers(800, 3000, difficulty.size)
    truth = GLMWeights(length=-1.3, difficulty=0.85, baseline=0.6)
    logit = truth.length * length_features(model_len, reference_len) + truth.difficulty * difficulty + truth.baseline
    p = 1 / (1 + np.exp(-logit))  # soft preferences exactly as the GLM says: the MLE is the truth
    result = length_controlled_win_rate(p, model_len, reference_len, difficulty)
    fitted = np.array([result.weights.length, result.weights.difficulty, result.weights.baseline])
    np.testing.assert_allclose(fitted, [truth.length, truth.difficulty, truth.baseline], atol=1e-4)
    assert result.win_rate == pytest.approx(predict_win_rate(truth, difficulty), abs=1e-3)
    raw = 100 * p.mean()
    assert result.win_rate < raw - 1  # the model's outputs are longer on average: control removes that edge


def test_fit_matches_sklearn_on_sampled_verdicts(difficulty) -> None:
    sklearn = pytest.importorskip("sklearn.linear_model")
    rng = np.random.default_rng(3)
    X = np.stack([np.tanh(rng.normal(size=difficulty.size)), difficulty, np.ones(difficulty.size)], axis=1)
    y = (rng.random(difficulty.size) < 1 / (1 + np.exp(-(X @ [-0.9, 0.7, 0.3])))).astype(float)
    ours = fit_logistic(X, y, l2=0.0)
    theirs = sklearn.LogisticRegression(C=np.inf, fit_intercept=False, tol=1e-12, max_iter=10_000).fit(X, y)
    np.testing.assert_allclose(ours, theirs.coef_[0], atol=1e-5)


def test_separable_verdicts_stay_finite() -> None:
    X = np.stack([np.linspace(-1, 1, 50), np.ones(50)], axis=1)
    w = fit_logistic(X, np.ones(50))
    assert np.all(np.isfinite(w)) and 1 / (1 + np.exp(-w[1])) > 0.999


def test_without_difficulty_the_term_is_left_out() -> None:
    rng = np.random.default_rng(1)
    p = rng.random(40)
    result = length_controlled_win_rate(p, rng.integers(10, 99, 40), rng.integers(10, 99, 40), None)
    assert not result.uses_difficulty and result.weights.difficulty == 0.0
    assert 0 < result.win_rate < 100
