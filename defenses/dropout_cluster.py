"""Dropout & Cluster: the trusted aggregator answers over many subsets of the proposals; the candidates are
split in two by meaning and the larger cluster wins: its medoid is the answer, or (``reaggregate``) the
aggregator synthesises that cluster's candidates once more. Costs one call per subset, minus the final
aggregator's call when the medoid replaces it.
"""

from __future__ import annotations

from defenses.base import Aggregate, DefenseOutcome, EmbeddingDefense, extra_calls
from defenses.clustering import embed_and_split, medoid
from defenses.dropout import aggregate_planned_subsets, answered, candidate_records, label, outcome
from moa.context import RequestContext
from moa.defense_config import DropoutClusterConfig
from moa.types import ChatRequest, DefenseRecord, Proposal


class DropoutCluster(EmbeddingDefense):
    config: DropoutClusterConfig

    async def apply(
        self, request: ChatRequest, proposals: list[Proposal], aggregate: Aggregate, *, final: bool, ctx: RequestContext
    ) -> DefenseOutcome:
        candidates = await aggregate_planned_subsets(proposals, aggregate, self.config)
        ok = answered(candidates)
        x, split = await embed_and_split(self.embedder, [candidates[k].text or "" for k in ok], self.config.seed, ctx)
        labels = [label(k, candidates[k], proposals) for k in ok]
        majority = split.members(0) if split.has_majority else list(range(len(ok)))  # indices into ok
        sizes = " and ".join(str(len(g)) for g in split.named(labels))
        why = f"the larger of two clusters of candidates ({sizes})" if split.has_majority else f"no majority ({sizes})"
        clusters = dict(zip(ok, split.labels.tolist(), strict=True))
        record = DefenseRecord(
            defense="dropout-cluster",
            layer=proposals[0].layer,
            kept=[],
            reason="",
            clusters=split.named(labels),
            candidates=candidate_records(proposals, candidates, clusters=clusters),
        )
        if self.config.reaggregate:
            references = [Proposal(proposals[0].layer, labels[i], candidates[ok[i]].text or "") for i in majority]
            update = {
                "kept": [labels[i] for i in majority],
                "reason": f"re-aggregates {why}",
                "calls": len(candidates),
                "extra_calls": extra_calls(len(candidates), None),
            }
            return DefenseOutcome(references, record.model_copy(update=update))
        winner = ok[majority[medoid(x[majority])]]
        references, answer, fields = outcome(proposals, candidates, winner, final)
        return DefenseOutcome(
            references, record.model_copy(update={**fields, "reason": f"the medoid of {why}"}), answer
        )
