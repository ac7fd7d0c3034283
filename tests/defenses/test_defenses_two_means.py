"""``two_means`` always makes at least one k-means++ start, and more starts only ever pick a split as good."""

from __future__ import annotations

import numpy as np

from defenses.clustering import two_means


def _two_groups() -> np.ndarray:
    rng = np.random.default_rng(1)
    a, b = np.eye(6)[0], np.eye(6)[3]
    x = np.stack([a, b, a, a, b]) + 0.02 * rng.standard_normal((5, 6))
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_no_restarts_asked_still_splits_once() -> None:
    x = _two_groups()
    split = two_means(x, seed=3, restarts=0)
    assert split.labels.tolist() == [0, 1, 0, 0, 1] and split.has_majority
    assert (split.labels == two_means(x, seed=3, restarts=1).labels).all()


def test_more_restarts_give_the_same_clear_split() -> None:
    x = _two_groups()
    assert all(two_means(x, seed=s, restarts=r).labels.tolist() == [0, 1, 0, 0, 1] for s in range(5) for r in (1, 4))
