"""What a defense is: one layer's proposals in, what goes on out, with a record of what it did and why.

The engine applies a defense to the last layer's proposals, before the final aggregator, and with
``between_layers`` to every layer's. A defense may call the trusted aggregator (``Aggregate``) on any subset of
the proposals; those calls land in the trace with role ``defense``. Before the final aggregator it may also
return a finished answer (a dropout defense's winner), which then replaces the aggregator's own call.
``Defense``, ``DefenseOutcome`` and ``Aggregate`` are defined with the other seams in ``moa.interfaces``.
"""

from __future__ import annotations

from defenses.embeddings import Embedder
from moa.defense_config import DefenseConfig
from moa.interfaces import Aggregate, Defense, DefenseOutcome
from moa.types import Generation

__all__ = ["Aggregate", "Defense", "DefenseOutcome", "EmbeddingDefense", "extra_calls"]


class EmbeddingDefense:
    """What moa's defenses share: their config, where they apply, and the embedder they are handed (built by
    ``defenses.embeddings.make_embedder`` from ``config.embeddings``)."""

    def __init__(self, config: DefenseConfig, embedder: Embedder) -> None:
        self.config = config
        self.between_layers = config.between_layers
        self.embedder = embedder


def extra_calls(calls: int, answer: Generation | None) -> int:
    """Calls beyond an undefended run's: a finished answer saves the final aggregator's one call."""
    return calls - (1 if answer is not None else 0)
