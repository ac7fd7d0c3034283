"""Cluster & Filter: embed the proposals, split them in two, pass on only the larger cluster. No model calls.

A deceiver that argues something other than what the honest majority says lands in the smaller cluster and
never reaches the aggregator. With no majority (one cluster, or two of equal size) nothing is dropped.
"""

from __future__ import annotations

from defenses.base import Aggregate, DefenseOutcome, EmbeddingDefense
from defenses.clustering import embed_and_split, mean_similarity
from moa.context import RequestContext
from moa.defense_config import ClusterFilterConfig
from moa.types import ChatRequest, DefenseRecord, Proposal


class ClusterFilter(EmbeddingDefense):
    config: ClusterFilterConfig

    async def apply(
        self, request: ChatRequest, proposals: list[Proposal], aggregate: Aggregate, *, final: bool, ctx: RequestContext
    ) -> DefenseOutcome:
        x, split = await embed_and_split(self.embedder, [p.text for p in proposals], self.config.seed, ctx)
        names = [p.agent for p in proposals]
        clusters = split.named(names)
        record = DefenseRecord(
            defense="cluster-filter", layer=proposals[0].layer, kept=names, clusters=clusters, reason=""
        )
        if not split.has_majority:
            why = "the proposals form one cluster" if len(clusters) == 1 else "two clusters of equal size"
            return DefenseOutcome(proposals, record.model_copy(update={"reason": f"{why}: nothing dropped"}))
        kept, dropped = split.members(0), split.members(1)
        reason = (
            f"kept the larger of two clusters ({len(kept)} of {len(proposals)} proposals); dropped {len(dropped)} "
            f"whose mean cosine similarity to the kept ones is {mean_similarity(x, dropped, kept):.2f}"
        )
        update = {"kept": [names[i] for i in kept], "dropped": [names[i] for i in dropped], "reason": reason}
        return DefenseOutcome([proposals[i] for i in kept], record.model_copy(update=update))
