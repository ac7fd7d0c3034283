"""In-context clustering: the Cluster & Filter split, but nothing is dropped: every proposal goes on, its first
line naming its group and the group's size, so the aggregator can weigh a lone dissenter knowingly. No model calls.
"""

from __future__ import annotations

from defenses.base import Aggregate, DefenseOutcome, EmbeddingDefense
from defenses.clustering import embed_and_split
from moa.context import RequestContext
from moa.defense_config import InContextClusterConfig
from moa.types import ChatRequest, DefenseRecord, Proposal


def group_line(group: int, size: int, total: int) -> str:
    return f"[grouped by meaning: this answer is in group {group}, which holds {size} of the {total} answers]"


class InContextCluster(EmbeddingDefense):
    config: InContextClusterConfig

    async def apply(
        self, request: ChatRequest, proposals: list[Proposal], aggregate: Aggregate, *, final: bool, ctx: RequestContext
    ) -> DefenseOutcome:
        _, split = await embed_and_split(self.embedder, [p.text for p in proposals], self.config.seed, ctx)
        sizes, total = split.sizes, len(proposals)
        labelled = [
            p.with_text(f"{group_line(int(g) + 1, sizes[int(g)], total)}\n{p.text}")
            for p, g in zip(proposals, split.labels, strict=True)
        ]
        clusters = split.named([p.agent for p in proposals])
        reason = f"labelled every proposal with its group (sizes {' and '.join(str(len(c)) for c in clusters)})"
        record = DefenseRecord(
            defense="in-context-cluster",
            layer=proposals[0].layer,
            kept=[p.agent for p in proposals],
            clusters=clusters,
            reason=reason,
        )
        return DefenseOutcome(labelled, record)
