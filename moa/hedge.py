"""Hedged calls: when a backend starts a second, identical call for a slow one.

A backend keeps the latencies it has seen per model (whole calls: to the answer; streams, and whole calls made
as streams: to the first piece) and counts its calls and hedges, so that ``max_extra`` caps the share of calls
hedged.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Literal

from moa.config import HedgePolicy

#: what a latency measures: a whole call to its answer, or a stream to its first piece
CallKind = Literal["whole", "stream"]

_WINDOW = 1000  # latencies kept per model and kind


class Hedging:
    """One backend's hedging state: the latencies seen per (model, kind), and its calls and hedges so far."""

    def __init__(self) -> None:
        self._latencies: dict[tuple[str, CallKind], deque[float]] = {}
        self.calls = 0  # logical calls made under a hedge policy
        self.hedged = 0  # of which were hedged

    def observe(self, model: str, kind: CallKind, seconds: float) -> None:
        """Record how long a call of ``model`` took to answer (a stream: to its first piece)."""
        self._latencies.setdefault((model, kind), deque(maxlen=_WINDOW)).append(seconds)

    def delay(self, policy: HedgePolicy, model: str, kind: CallKind) -> float | None:
        """Seconds after which a call gets its hedge: the ``after_quantile`` of the latencies seen once there are
        ``min_samples`` of them, else ``after_s``; ``None`` (no hedge) while neither is known."""
        if policy.after_quantile is not None:
            seen = sorted(self._latencies.get((model, kind), ()))
            if len(seen) >= policy.min_samples:
                return seen[min(len(seen) - 1, math.ceil(policy.after_quantile * len(seen)) - 1)]
        return policy.after_s

    def admit(self, policy: HedgePolicy) -> bool:
        """Whether one more hedge is within ``max_extra``: fewer hedges so far than ``max_extra`` times the calls
        (this one counted), so the first call may be hedged and the share stays within one hedge of the cap.
        Counts it when it is."""
        if self.hedged >= policy.max_extra * self.calls - 1e-9:
            return False
        self.hedged += 1
        return True
