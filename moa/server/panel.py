"""The panel (``moa_include_proposals``): each proposal of a request with what its call cost, for the client.

An entry is one proposal: its choice ``index``, ``layer``, ``agent``, ``model``, ``text`` (tool calls written
out), ``tool_calls`` (OpenAI's shape), ``deceptive``, ``dropped`` and ``reason``, and the call that made it:
``completion_tokens``, ``latency_s``, ``cost_usd`` and ``samples`` (the samples that call made: a call with
``n > 1`` makes several proposals, which share its figures). A whole response carries the entries as
``moa.proposals``; a stream sends one ``moa.proposal`` chunk per entry as each proposal arrives.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from moa.progress import ProgressEvent
from moa.types import CallRecord, Completion, ProposalRecord


def made_by(trace: Sequence[CallRecord], layer: int, agent: str) -> CallRecord | None:
    """The proposer call at ``layer`` that made ``agent``'s proposal: its own record, or that of the ``n``-sample
    call whose sample it is (``agent#i``); the last that answered, when it was retried or hedged."""
    names = {agent, agent.rsplit("#", 1)[0]}
    calls = [r for r in trace if r.role == "proposer" and r.layer == layer and r.agent in names]
    answered = [r for r in calls if r.outcome == "ok"]
    chosen = answered or calls
    return chosen[-1] if chosen else None


def entry(index: int, record: ProposalRecord, model: str | None, trace: Sequence[CallRecord]) -> dict[str, Any]:
    """One proposal's panel entry (``record`` as the response's trace keeps it)."""
    call = made_by(trace, record.layer, record.agent)
    return {
        "index": index,
        "layer": record.layer,
        "agent": record.agent,
        "model": model if model is not None else (call.model if call is not None else None),
        "text": record.text,
        "tool_calls": record.tool_calls,
        "deceptive": record.deceptive,
        "dropped": record.dropped,
        "reason": record.reason,
        "completion_tokens": call.completion_tokens if call is not None else 0,
        "latency_s": call.latency_s if call is not None else None,
        "cost_usd": call.cost_usd if call is not None else None,
        "samples": call.n if call is not None else 1,
    }


def whole_panel(completions: Sequence[Completion]) -> list[dict[str, Any]]:
    """Every choice's proposals, in the order they were kept (the dropped ones after)."""
    return [entry(i, p, None, c.trace) for i, c in enumerate(completions) for p in c.proposals]


def streamed_entry(index: int, event: ProgressEvent, trace: Sequence[CallRecord]) -> dict[str, Any]:
    """The entry of a ``proposal`` event of choice ``index``, its call looked up in the choice's trace so far."""
    record = ProposalRecord(
        layer=event.layer,
        agent=event.agent,
        text=event.text or "",
        tool_calls=list(event.tool_calls or ()),
        deceptive=bool(event.deceptive),
    )
    return entry(index, record, event.model, trace)


__all__ = ["entry", "made_by", "streamed_entry", "whole_panel"]
