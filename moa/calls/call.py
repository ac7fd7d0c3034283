"""What every layer of a call sees: the ``Call`` (fixed when it is made) and its ``CallState`` (what its attempts
report), and how each kind of item is counted (``Meter``)."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from dataclasses import dataclass
from typing import Generic, Protocol, TypeVar

from moa.context import CallSite, RequestContext
from moa.limits import tokens_from_chars
from moa.telemetry import Span
from moa.types import CallRecord, Delta, GenerateResult, Usage
from proposers.openai_schema import EmbeddingResult

T = TypeVar("T")
T_contra = TypeVar("T_contra", contravariant=True)


@dataclass(frozen=True, slots=True, kw_only=True)
class Call:
    """One logical call: which backend and model, where it sits in its request, and its size."""

    backend: str
    model: str
    site: CallSite
    ctx: RequestContext
    n: int = 1
    prompt_chars: int
    estimate: int  # tokens the backend's limits hold for it (``moa.limits.estimate_tokens``)
    worst: tuple[int, int]  # at most (prompt, completion) tokens: held against the request's budget


@dataclass(slots=True)
class CallState:
    """What the attempts of one logical call (one lane of a hedged call) report to the layers above."""

    hedge: bool = False  # the second call of a hedged pair
    retries: int = 0
    usage: Usage | None = None  # a stream's usage (its last delta's)
    template: str | None = None  # how the proposer fitted the prompt to its chat template
    seed: int | None = None  # the seed a local proposer sampled with (a stream's last delta says)
    reason: str | None = None  # why the call was cancelled, when the backend cancelled it ("hedge lost")
    first_token: Callable[[], None] | None = None  # told when the call's first piece arrives (a hedge's race)
    record: CallRecord | None = None  # the call's trace record, once made
    span: Span | None = None  # the call's CLIENT span, when its request is traced


#: one layer of a call: the call's state in, its items out
Send = Callable[[CallState], AsyncGenerator[T, None]]


def tokens_used(usage: Usage | None, prompt_chars: int, completion_chars: int) -> int:
    """A call's tokens for the tokens-per-minute limit: the upstream's usage, else estimated from characters
    (no usage at all, or a stream's usage that counted only the pieces)."""
    if usage is None or usage.total_tokens == 0 or usage.prompt_tokens == 0:
        return tokens_from_chars(prompt_chars, completion_chars)
    return usage.total_tokens


class Meter(Protocol, Generic[T_contra]):
    """How the items of one kind are counted as they come from the proposer."""

    def chars(self, item: T_contra) -> int:
        """The completion characters in ``item``."""
        ...

    def usage(self, item: T_contra) -> Usage | None:
        """The upstream's usage carried by ``item``, if any."""
        ...

    def observe(self, state: CallState, item: T_contra) -> None:
        """Report what ``item`` says to the call's state."""
        ...

    def used(self, usage: Usage | None, prompt_chars: int, completion_chars: int) -> int:
        """The tokens an attempt used, for the limits."""
        ...


class DeltaMeter:
    """A stream's pieces: the first piece is told to a hedge's race, the last delta's usage is kept."""

    def chars(self, item: Delta) -> int:
        return len(item.content)

    def usage(self, item: Delta) -> Usage | None:
        return item.usage if item.finish_reason is not None else None

    def observe(self, state: CallState, item: Delta) -> None:
        if (item.content or item.tool_calls) and (told := state.first_token) is not None:
            state.first_token = None  # once a call, whichever attempt sends it
            told()
        if item.finish_reason is not None and item.usage is not None:
            state.usage = item.usage
        if item.template is not None:
            state.template = item.template
        if item.seed is not None:
            state.seed = item.seed

    def used(self, usage: Usage | None, prompt_chars: int, completion_chars: int) -> int:
        return tokens_used(usage, prompt_chars, completion_chars)


class ResultMeter:
    """A whole answer of ``n`` generations."""

    def chars(self, item: GenerateResult) -> int:
        return sum(len(g.text) for g in item.generations)

    def usage(self, item: GenerateResult) -> Usage | None:
        return item.usage

    def observe(self, state: CallState, item: GenerateResult) -> None:
        pass

    def used(self, usage: Usage | None, prompt_chars: int, completion_chars: int) -> int:
        return tokens_used(usage, prompt_chars, completion_chars)


class EmbeddingMeter:
    """An embeddings answer: prompt tokens only."""

    def chars(self, item: EmbeddingResult) -> int:
        return 0

    def usage(self, item: EmbeddingResult) -> Usage | None:
        return item.usage

    def observe(self, state: CallState, item: EmbeddingResult) -> None:
        pass

    def used(self, usage: Usage | None, prompt_chars: int, completion_chars: int) -> int:
        return (usage.total_tokens if usage is not None else 0) or tokens_from_chars(prompt_chars, 0)


DELTAS, RESULTS, EMBEDDINGS = DeltaMeter(), ResultMeter(), EmbeddingMeter()
