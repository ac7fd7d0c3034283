"""What a defense is: one layer's proposals in, what goes on out, with a record of what it did and why.

The engine applies a defense to the last layer's proposals, before the final aggregator, and with
``between_layers`` to every layer's. A defense may call the trusted aggregator (``Aggregate``) on any subset of
the proposals; those calls land in the trace with role ``defense``. Before the final aggregator it may also
return a finished answer (a dropout defense's winner), which then replaces the aggregator's own call.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from defenses.embeddings import make_embedder
from moa.defense_config import DefenseConfig
from moa.types import ChatRequest, DefenseRecord, Generation, Proposal

#: The trusted aggregator over some proposals; the string says what the call is for, in the trace.
Aggregate = Callable[[list[Proposal], str], Awaitable[Generation]]


@dataclass(frozen=True, slots=True)
class DefenseOutcome:
    """What a defense passes on from one layer's proposals, and its record of what it did and why."""

    references: list[Proposal]  # what goes on: the next layer's references, or the final aggregator's
    record: DefenseRecord
    answer: Generation | None = None  # a finished final answer (only when ``final``)


class Defense(Protocol):
    between_layers: bool

    async def apply(
        self, request: ChatRequest, proposals: list[Proposal], aggregate: Aggregate, final: bool
    ) -> DefenseOutcome:
        """Screen one layer's proposals; ``final`` when the final aggregator comes next."""
        ...


class EmbeddingDefense:
    """What moa's defenses share: their config, where they apply, and an embedder (loaded on first use)."""

    def __init__(self, config: DefenseConfig) -> None:
        self.config = config
        self.between_layers = config.between_layers
        self.embedder = make_embedder(config.embeddings)


def extra_calls(calls: int, answer: Generation | None) -> int:
    """Calls beyond an undefended run's: a finished answer saves the final aggregator's one call."""
    return calls - (1 if answer is not None else 0)
