"""``decide: vote``: when a strict majority of the last layer's proposals agree, their answer is the response and
the aggregator is not called.

Proposals agree when they make the same tool calls (names equal, arguments equal as parsed JSON; the order of
parallel calls does not matter), or, for a request with a JSON ``response_format``, when they are the same JSON
value. A text answer never counts as agreeing (two texts are rarely equal, and the aggregator is there to merge
them). ``majority`` returns the agreed answer, and a line for the trace saying how many agreed.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Hashable, Sequence
from dataclasses import dataclass

from moa.tools import ToolCall
from moa.types import Generation, Proposal


@dataclass(frozen=True, slots=True)
class Vote:
    """The outcome of a vote: the agreed answer (``None`` without a majority) and what the trace says."""

    answer: Generation | None
    reason: str


def majority(proposals: Sequence[Proposal], json_answers: bool = False) -> Vote:
    """The answer a strict majority of ``proposals`` agree on (see the module); ``json_answers``: the request asks
    for JSON, so equal JSON answers agree too."""
    keys = [_key(p, json_answers) for p in proposals]
    counted = Counter(k for k in keys if k is not None)
    total = len(proposals)
    if not counted:
        return Vote(None, f"vote: no majority (none of {total} proposals made tool calls)")
    key, votes = counted.most_common(1)[0]
    if 2 * votes <= total:
        return Vote(None, f"vote: no majority ({votes} of {total} proposals agreed)")
    winner = proposals[keys.index(key)]
    what = "tool calls" if winner.tool_calls else "JSON answer"
    reason = f"vote: {votes} of {total} proposals made the same {what}; the aggregator was not called"
    if winner.tool_calls:
        return Vote(Generation("", "tool_calls", tool_calls=winner.tool_calls), reason)
    return Vote(Generation(winner.text, "stop"), reason)


def _key(proposal: Proposal, json_answers: bool) -> Hashable | None:
    """What two agreeing proposals share; ``None`` for one that cannot agree (a text answer)."""
    if proposal.tool_calls:
        return ("calls", tuple(sorted(_call_key(c) for c in proposal.tool_calls)))
    if json_answers:
        try:
            return ("json", json.dumps(json.loads(proposal.text), sort_keys=True))
        except ValueError:
            return None
    return None


def _call_key(call: ToolCall) -> tuple[str, str]:
    parsed = call.parsed_arguments()
    arguments = call.arguments if parsed is None else json.dumps(parsed, sort_keys=True)
    return call.name, arguments


__all__ = ["Vote", "majority"]
