"""One request's state: made once where the request enters (``moa.Ensemble``, ``moa serve``) and handed down,
as an argument, through the engine to every backend call.

A ``RequestContext`` holds the request's id (for its log lines), its deadline, its budget, the trace its calls
are recorded in, the sink of its progress events, where its embedding calls are recorded and, when it is traced,
the span its calls' spans go under (``moa.telemetry``: the request's, then each layer's; ``within``). The ``n`` choices
of one request are sibling contexts (``choice``): one id, deadline, budget and progress sink, a trace each.
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field, replace
from typing import Literal

from moa.budget import RequestBudget
from moa.progress import ProgressSink
from moa.telemetry import Span
from moa.types import CallRecord

CallRole = Literal["proposer", "aggregator", "defense"]


@dataclass(frozen=True, slots=True)
class CallSite:
    """Where a call sits in a request, for its trace record."""

    layer: int
    role: CallRole
    agent: str
    step: str | None = None


#: where embedding calls made outside any defense step are recorded
EMBEDDINGS = CallSite(0, "defense", "embedder", "embed")


@dataclass(slots=True)
class RequestContext:
    """What one run of a request carries down to its calls (see the module's docstring)."""

    request_id: str = "-"
    deadline_s: float | None = None  # the request's time limit, for its error
    deadline_at: float | None = None  # the loop time (``loop.time()``) by which it must finish
    budget: RequestBudget | None = None
    progress: ProgressSink | None = None
    trace: list[CallRecord] = field(default_factory=list)
    embeddings: CallSite = EMBEDDINGS  # where this run's embedding calls are recorded
    span: Span | None = None  # the parent of the spans made under it; None: the request is not traced

    @classmethod
    def start(
        cls,
        *,
        deadline_s: float | None = None,
        budget: RequestBudget | None = None,
        progress: ProgressSink | None = None,
        request_id: str = "-",
        span: Span | None = None,
    ) -> RequestContext:
        """A context whose deadline, ``deadline_s`` from now, is running (needs the running loop)."""
        at = None if deadline_s is None else asyncio.get_running_loop().time() + deadline_s
        return cls(request_id, deadline_s, at, budget, progress, span=span)

    def remaining_s(self) -> float:
        """Seconds left before the deadline (``inf`` without one)."""
        if self.deadline_at is None:
            return math.inf
        return self.deadline_at - asyncio.get_running_loop().time()

    def choice(self) -> RequestContext:
        """A sibling for another choice of the same request: everything shared but the trace."""
        return replace(self, trace=[])

    def within(self, span: Span | None) -> RequestContext:
        """This context (the same trace, budget and progress), its calls' spans going under ``span``."""
        return self if span is None else replace(self, span=span)

    def embedding_calls_at(self, site: CallSite) -> RequestContext:
        """This context, with its embedding calls recorded at ``site`` (in the same trace)."""
        return replace(self, embeddings=site)
