"""Reference drafting: candidates copied from the prompt, for aggregators whose prompt holds the references.

An aggregator's answer reuses long stretches of its references. To draft, find the longest suffix of the
tokens so far (prompt and output) that also occurs earlier in them, and propose the tokens that followed
that occurrence. No draft model runs, and the target still verifies every candidate, so the output is
unchanged. The candidate length is the length of the match, that is how long the output has followed the
reference so far, within [min_k, max_k]. Matches shorter than ``min_match`` tokens propose nothing: a plain
one-token step is cheaper than verifying a poor guess (on a CPU a 7-token verify costs 1.5-2x a 1-token step).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from proposers.specdec.sampling import Sampler
from proposers.specdec.verify import Draft


def longest_suffix_match(seq: np.ndarray) -> tuple[int, int]:
    """(length, end) of the longest suffix of ``seq`` that also ends at an earlier position ``end`` < len - 1.

    seq: [N] token ids. Returns (0, -1) when the last token occurs nowhere before. Among equally long
    matches the latest is taken (the closest context).
    """
    n = len(seq)
    if n < 2:
        return 0, -1
    ends = np.flatnonzero(seq[: n - 1] == seq[-1])  # earlier positions holding the newest token
    length = 1 if ends.size else 0
    while ends.size and length < n - 1:
        starts = ends - length
        keep = (starts >= 0) & (seq[np.maximum(starts, 0)] == seq[n - 1 - length])
        if not keep.any():
            break
        ends = ends[keep]
        length += 1
    return length, int(ends[-1]) if ends.size else -1


@dataclass(slots=True)
class LookupDrafter:
    min_k: int = 2
    max_k: int = 20
    min_match: int = 3

    def propose(self, tokens: list[int], limit: int, sampler: Sampler) -> Draft:
        seq = np.asarray(tokens, dtype=np.int64)
        length, end = longest_suffix_match(seq)
        if length < self.min_match or limit <= 0:
            return Draft([])
        k = min(limit, self.max_k, max(self.min_k, length))
        return Draft(seq[end + 1 : end + 1 + k].tolist())

    def update(self, drafted: int, accepted: int) -> None:
        pass  # the match length already says how long copying has held


__all__ = ["LookupDrafter", "longest_suffix_match"]
