"""Two-way k-means and medoids on unit-length embeddings (numpy, seeded: the same input, the same split)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from defenses.embeddings import Embedder
from moa.context import RequestContext

# Embeddings closer than this (cosine distance) to each other everywhere are one cluster: there is nothing to split.
_SAME = 1e-4


@dataclass(frozen=True, slots=True)
class Split:
    """A two-way split: ``labels[i]`` is 0 for the larger cluster (or the one holding item 0 on a tie), else 1."""

    labels: np.ndarray  # [N] int

    @property
    def sizes(self) -> tuple[int, int]:
        ones = int(self.labels.sum())
        return len(self.labels) - ones, ones

    @property
    def has_majority(self) -> bool:
        """Two clusters, one larger than the other."""
        big, small = self.sizes
        return big > small > 0

    def members(self, cluster: int) -> list[int]:
        return [int(i) for i in np.flatnonzero(self.labels == cluster)]

    def named(self, names: list[str]) -> list[list[str]]:
        """Each non-empty cluster as the names of its members, the larger first."""
        return [[names[i] for i in self.members(k)] for k in (0, 1) if self.members(k)]


def two_means(x: np.ndarray, seed: int, restarts: int = 4, iterations: int = 50) -> Split:
    """k-means with k = 2 on the rows of ``x`` ([N, D], unit length): k-means++ starts, best of ``restarts``
    (one at least)."""
    n = x.shape[0]
    if n < 2 or float((1.0 - x @ x.T).max()) < _SAME:
        return Split(np.zeros(n, dtype=np.int64))
    rng = np.random.default_rng(seed)
    best, best_inertia = _lloyd(x, _plus_plus(x, rng), iterations)
    for _ in range(restarts - 1):
        labels, inertia = _lloyd(x, _plus_plus(x, rng), iterations)
        if inertia < best_inertia - 1e-9:
            best, best_inertia = labels, inertia
    return _canonical(best)


def _plus_plus(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Two starting centres: one row at random, the second drawn with probability proportional to d^2."""
    first = x[rng.integers(x.shape[0])]
    d2 = ((x - first) ** 2).sum(axis=1)  # [N]
    second = x[rng.choice(x.shape[0], p=d2 / d2.sum())]
    return np.stack([first, second])  # [2, D]


def _lloyd(x: np.ndarray, centres: np.ndarray, iterations: int) -> tuple[np.ndarray, float]:
    labels = np.zeros(x.shape[0], dtype=np.int64)
    for _ in range(iterations):
        d2 = ((x[:, None, :] - centres[None, :, :]) ** 2).sum(axis=2)  # [N, 2]
        new = d2.argmin(axis=1)
        if (new == 0).all() or (new == 1).all():
            break  # a start that loses a cluster: keep the last split that had two
        labels = new
        moved = np.stack([x[labels == k].mean(axis=0) for k in (0, 1)])  # [2, D]
        if np.allclose(moved, centres):
            break
        centres = moved
    inertia = float(((x - centres[labels]) ** 2).sum())
    return labels, inertia


def _canonical(labels: np.ndarray) -> Split:
    ones = int(labels.sum())
    zeros = len(labels) - ones
    if ones > zeros or (ones == zeros and labels[0] == 1):
        labels = 1 - labels
    return Split(labels.astype(np.int64))


def medoid(x: np.ndarray) -> int:
    """The row most similar to all the others (sum of cosine similarities); the first one on a tie."""
    return int((x @ x.T).sum(axis=1).argmax())  # [N] -> index


def mean_similarity(x: np.ndarray, rows: list[int], to: list[int]) -> float:
    """Mean cosine similarity between the ``rows`` and the ``to`` rows of ``x``."""
    return float((x[rows] @ x[to].T).mean())


async def embed_and_split(
    embedder: Embedder, texts: list[str], seed: int, ctx: RequestContext | None = None
) -> tuple[np.ndarray, Split]:
    """Embed ``texts`` (off the event loop, as embedders do; calls recorded in ``ctx``) and split them in two."""
    x = await embedder.embed(texts, ctx)  # [N, D]
    return x, two_means(x, seed)
