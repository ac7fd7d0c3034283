"""Dropout & Vote: the trusted aggregator answers over many subsets of the proposals, then the answers vote.

Multiple choice (most candidates name an option): the option most candidates name wins, and the answer is the
winning candidate from the largest subset. Free text: the medoid candidate, the one closest in meaning to the
others. Costs one aggregator call per subset, minus the final aggregator's call that the winner replaces.
"""

from __future__ import annotations

from collections import Counter

from defenses.base import Aggregate, DefenseOutcome, EmbeddingDefense
from defenses.clustering import mean_similarity, medoid
from defenses.dropout import Candidate, aggregate_planned_subsets, answered, candidate_records, outcome
from defenses.options import parse_option
from moa.context import RequestContext
from moa.defense_config import DropoutVoteConfig
from moa.types import ChatRequest, DefenseRecord, Proposal


class DropoutVote(EmbeddingDefense):
    config: DropoutVoteConfig

    async def apply(
        self, request: ChatRequest, proposals: list[Proposal], aggregate: Aggregate, *, final: bool, ctx: RequestContext
    ) -> DefenseOutcome:
        vote = self.config.vote
        candidates = await aggregate_planned_subsets(proposals, aggregate, self.config)
        ok = answered(candidates)
        options = {k: parse_option(candidates[k].text or "") for k in ok}
        named = [k for k in ok if options[k] is not None]
        if named and (vote == "option" or (vote == "auto" and 2 * len(named) > len(ok))):
            winner, reason = _vote_option(candidates, named, options)
        else:
            winner, reason = await self._medoid(candidates, ok, ctx)
            if vote == "option":
                reason = f"no candidate named an option; {reason}"
        references, answer, fields = outcome(proposals, candidates, winner, final)
        record = DefenseRecord(
            defense="dropout-vote",
            layer=proposals[0].layer,
            reason=reason,
            candidates=candidate_records(proposals, candidates, options=options),
            **fields,
        )
        return DefenseOutcome(references, record, answer)

    async def _medoid(self, candidates: list[Candidate], ok: list[int], ctx: RequestContext) -> tuple[int, str]:
        x = await self.embedder.embed([candidates[k].text or "" for k in ok], ctx)  # [M, D]
        m = medoid(x)
        others = [i for i in range(len(ok)) if i != m] or [m]
        reason = f"free text: the medoid of {len(ok)} candidates"
        return ok[m], f"{reason} (mean cosine similarity to the others {mean_similarity(x, [m], others):.2f})"


def _vote_option(candidates: list[Candidate], named: list[int], options: dict[int, str | None]) -> tuple[int, str]:
    """The winning option's candidate from the largest subset, and why. Ties go to the option voted first."""
    votes = Counter(options[k] for k in named)
    top = max(votes.values())
    leaders = [option for option, n in votes.items() if n == top]
    option = leaders[0]
    tally = ", ".join(f"{o}: {n}" for o, n in votes.most_common())
    reason = f"option {option} won {top} of {len(named)} votes ({tally})"
    if len(leaders) > 1:
        reason += f"; a tie with {', '.join(str(o) for o in leaders[1:])}, broken by which was voted first"
    winner = max((k for k in named if options[k] == option), key=lambda k: (len(candidates[k].subset), -k))
    return winner, reason
