"""What both dropout defenses share: which subsets of the proposals to aggregate, and aggregating them at once.

Like the Doge's election by lots, each aggregation sees only some of the proposals. Subsets hold at most
``max_size`` proposals (default: half, rounded down), so that most of them leave out any one proposal: with one
deceiver among four proposals and subsets of one or two, six of the ten subsets never see it.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import dataclass
from itertools import combinations
from math import comb
from typing import Any

from defenses.base import Aggregate, extra_calls
from moa.defense_config import DropoutClusterConfig, DropoutVoteConfig
from moa.errors import BackendError
from moa.types import CandidateRecord, Generation, Proposal

DropoutConfig = DropoutVoteConfig | DropoutClusterConfig


def plan_subsets(n: int, max_size: int | None, max_subsets: int, seed: int) -> list[tuple[int, ...]]:
    """Index subsets of ``range(n)`` to aggregate, smallest first.

    Every non-empty subset of at most ``max_size`` items when there are no more than ``max_subsets`` of them,
    else ``max_subsets`` distinct ones drawn with ``seed``, each such subset equally likely.
    """
    size = min(n, max_size if max_size is not None else max(1, n // 2))
    total = sum(comb(n, s) for s in range(1, size + 1))
    if total <= max_subsets:
        return [c for s in range(1, size + 1) for c in combinations(range(n), s)]
    rng = random.Random(seed)
    sizes, weights = list(range(1, size + 1)), [comb(n, s) for s in range(1, size + 1)]
    chosen: set[tuple[int, ...]] = set()
    while len(chosen) < max_subsets:
        s = rng.choices(sizes, weights)[0]
        chosen.add(tuple(sorted(rng.sample(range(n), s))))
    return sorted(chosen, key=lambda c: (len(c), c))


@dataclass(frozen=True, slots=True)
class Candidate:
    """The trusted aggregator's answer over one subset of the proposals."""

    subset: tuple[int, ...]
    answer: Generation | None
    error: str | None = None

    @property
    def text(self) -> str | None:
        return self.answer.text if self.answer is not None else None


async def aggregate_subsets(
    proposals: list[Proposal], subsets: list[tuple[int, ...]], aggregate: Aggregate
) -> list[Candidate]:
    """Every subset's aggregation at once; failed calls become candidates without text (all failing fails)."""
    calls = [
        aggregate([proposals[i] for i in subset], f"subset {k + 1}/{len(subsets)}: {_names(proposals, subset)}")
        for k, subset in enumerate(subsets)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    candidates = []
    for subset, result in zip(subsets, results, strict=True):
        if isinstance(result, BackendError):
            candidates.append(Candidate(subset, None, str(result)))
        elif isinstance(result, BaseException):
            raise result
        else:
            candidates.append(Candidate(subset, result))
    if all(c.text is None for c in candidates):
        raise next(r for r in results if isinstance(r, BaseException))
    return candidates


async def aggregate_planned_subsets(
    proposals: list[Proposal], aggregate: Aggregate, config: DropoutConfig
) -> list[Candidate]:
    """The subsets ``config`` asks for, each aggregated (one call each, all at once)."""
    subsets = plan_subsets(len(proposals), config.max_size, config.max_subsets, config.seed)
    return await aggregate_subsets(proposals, subsets, aggregate)


def answered(candidates: list[Candidate]) -> list[int]:
    """Indices of the candidates whose call succeeded."""
    return [k for k, c in enumerate(candidates) if c.text is not None]


def _names(proposals: list[Proposal], subset: tuple[int, ...]) -> str:
    return ", ".join(proposals[i].agent for i in subset)


def candidate_records(
    proposals: list[Proposal],
    candidates: list[Candidate],
    options: dict[int, str | None] | None = None,
    clusters: dict[int, int] | None = None,
) -> list[CandidateRecord]:
    """The trace's view of the candidates, with the option and cluster each got (by candidate index)."""
    return [
        CandidateRecord(
            subset=[proposals[i].agent for i in c.subset],
            text=c.text,
            error=c.error,
            option=(options or {}).get(k),
            cluster=(clusters or {}).get(k),
        )
        for k, c in enumerate(candidates)
    ]


def label(k: int, candidate: Candidate, proposals: list[Proposal]) -> str:
    """How the trace names candidate ``k``."""
    return f"candidate {k + 1} ({_names(proposals, candidate.subset)})"


def outcome(
    proposals: list[Proposal], candidates: list[Candidate], winner: int, final: bool
) -> tuple[list[Proposal], Generation | None, dict[str, Any]]:
    """What a winning candidate passes on: its subset's proposals, itself as the answer when ``final``, and the
    record's fields that say so."""
    win = candidates[winner]
    answer = win.answer if final else None
    fields = {
        "kept": [proposals[i].agent for i in win.subset],
        "dropped": [p.agent for i, p in enumerate(proposals) if i not in win.subset],
        "chosen": label(winner, win, proposals),
        "calls": len(candidates),
        "extra_calls": extra_calls(len(candidates), answer),
    }
    return [proposals[i] for i in win.subset], answer, fields
