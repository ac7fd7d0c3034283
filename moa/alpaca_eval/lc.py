"""The length-controlled win rate (Dubois et al., 2024, "Length-Controlled AlpacaEval").

A logistic GLM explains the judge's preference for the model over the reference on one instruction as

    logit P(model wins) = w_length * tanh(d / sd(d)) + w_difficulty * difficulty + w_baseline

where ``d`` is the reference's length minus the model's (characters, AlpacaEval's sign convention, so the
weights read like the official ones) and ``difficulty`` is the instruction's fixed difficulty term. The
length-controlled win rate is the model's mean predicted preference with the length difference set to zero.

The fit is maximum likelihood on the soft preferences (Newton's method with a negligible ridge that keeps the
weights finite when the judge's verdicts separate perfectly). AlpacaEval's own v1 fit also adds an L1 penalty
and pulls the weights toward two deliberately length-gamed baselines, from data not shipped here, so a local
fit lands close to, not exactly on, the leaderboard's figure; ``predict_win_rate`` with the official weights
reproduces the leaderboard exactly.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

import numpy as np

#: the official weights file's column names, in the order of ``GLMWeights``
OFFICIAL_COLUMNS = ("np.tanh(std_delta_len)", "instruction_difficulty", "not_gamed_baseline.astype(float)")


@dataclass(frozen=True, slots=True)
class GLMWeights:
    length: float
    difficulty: float
    baseline: float

    def minus(self, other: GLMWeights) -> GLMWeights:
        return GLMWeights(
            self.length - other.length, self.difficulty - other.difficulty, self.baseline - other.baseline
        )


@dataclass(frozen=True, slots=True)
class LCResult:
    win_rate: float  # percent
    weights: GLMWeights
    uses_difficulty: bool


def read_official_weights(path: str | Path) -> dict[str, GLMWeights]:
    """AlpacaEval's fitted weights per model (a ``length_controlled_v1/baseline_*.csv`` file)."""
    with open(path, newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    return {row[""]: GLMWeights(*(float(row[c]) for c in OFFICIAL_COLUMNS)) for row in rows}


def _sigmoid(z: np.ndarray) -> np.ndarray:
    p: np.ndarray = np.exp(-np.logaddexp(0.0, -z))
    return p


def predict_win_rate(weights: GLMWeights, difficulty: np.ndarray) -> float:
    """Percent: the mean predicted preference over instructions at zero length difference."""
    # difficulty: [N]
    return float(100.0 * _sigmoid(weights.baseline + weights.difficulty * np.asarray(difficulty, float)).mean())


def length_features(model_len: np.ndarray, reference_len: np.ndarray) -> np.ndarray:
    """tanh of the standardised length difference (reference minus model), one value per instruction."""
    delta = np.asarray(reference_len, float) - np.asarray(model_len, float)  # [N]
    sd = delta.std(ddof=1) if delta.size > 1 else 0.0
    return np.tanh(delta / sd) if sd > 0 else np.zeros_like(delta)


def _penalised_loglik(X: np.ndarray, y: np.ndarray, w: np.ndarray, l2: float) -> float:
    z = X @ w  # [N]
    return float(np.sum(y * z - np.logaddexp(0.0, z)) - 0.5 * l2 * w @ w)


def fit_logistic(X: np.ndarray, y: np.ndarray, l2: float = 1e-4, max_iter: int = 100, tol: float = 1e-10) -> np.ndarray:
    """Maximum-likelihood logistic regression on soft labels ``y`` in [0, 1], by Newton's method (IRLS)."""
    # X: [N, K], y: [N] -> w: [K]
    w = np.zeros(X.shape[1])
    ridge = l2 * np.eye(X.shape[1])
    for _ in range(max_iter):
        p = _sigmoid(X @ w)  # [N]
        grad = X.T @ (y - p) - l2 * w  # [K]
        hess = (X * (p * (1 - p))[:, None]).T @ X + ridge  # [K, K]
        step = np.linalg.lstsq(hess, grad, rcond=None)[0]
        before, t = _penalised_loglik(X, y, w, l2), 1.0
        while t > 1e-8 and _penalised_loglik(X, y, w + t * step, l2) < before - 1e-12:
            t /= 2  # step halving keeps every iterate an improvement
        w = w + t * step
        if np.max(np.abs(t * step)) < tol:
            break
    return w


def length_controlled_win_rate(
    p_model: np.ndarray, model_len: np.ndarray, reference_len: np.ndarray, difficulty: np.ndarray | None
) -> LCResult:
    """Fit the GLM to one model's preferences and predict its win rate at zero length difference.

    Without ``difficulty`` (instructions outside AlpacaEval 2.0) the difficulty term is left out.
    """
    # p_model, model_len, reference_len, difficulty: [N]
    y = np.asarray(p_model, float)
    x_len = length_features(model_len, reference_len)
    if difficulty is None:
        w_len, w_base = fit_logistic(np.stack([x_len, np.ones_like(y)], axis=1), y)
        weights = GLMWeights(float(w_len), 0.0, float(w_base))
        return LCResult(predict_win_rate(weights, np.zeros_like(y)), weights, uses_difficulty=False)
    gamma = np.asarray(difficulty, float)
    w_len, w_diff, w_base = fit_logistic(np.stack([x_len, gamma, np.ones_like(y)], axis=1), y)
    weights = GLMWeights(float(w_len), float(w_diff), float(w_base))
    return LCResult(predict_win_rate(weights, gamma), weights, uses_difficulty=True)


__all__ = [
    "GLMWeights",
    "LCResult",
    "OFFICIAL_COLUMNS",
    "fit_logistic",
    "length_controlled_win_rate",
    "length_features",
    "predict_win_rate",
    "read_official_weights",
]
