"""The seams between the engine and its parts, at the bottom of the dependency graph.

Proposers, aggregators and defenses implement these protocols; the engine and the backend use them. This module
imports only ``moa.types``, ``moa.errors`` and ``moa.context`` (a request's state, ``RequestContext``), so every
layer above may import it and none imports upward through it.
``Caller`` is what an aggregator or a defense is handed to make model calls (``moa.backend.ModelCaller``);
``EmbeddingsBackend`` is what an OpenAI-compatible embedder calls (``moa.backend.Backend``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from moa.context import CallRole as CallRole  # re-exported: the seams name where a call sits
from moa.context import CallSite as CallSite
from moa.context import RequestContext
from moa.types import (
    ChatRequest,
    DefenseRecord,
    Delta,
    GenerateResult,
    Generation,
    Message,
    Proposal,
    SamplingParams,
)

# ---- proposers ---------------------------------------------------------------------------------------------


@runtime_checkable
class Proposer(Protocol):
    """One model backend. It makes single attempts: it knows nothing of layers, retries or rate limits (the
    backend wraps those around it), and raises only ``moa.errors.BackendError`` subclasses."""

    #: True when one call can return ``n`` samples sharing one prefill; else the engine makes n calls.
    supports_n: bool

    async def generate(
        self, messages: list[Message], params: SamplingParams, n: int = 1, *, model: str | None = None
    ) -> GenerateResult:
        """One call: ``n`` generations for ``messages`` (``model`` overrides the backend's default model)."""
        ...

    def stream(
        self, messages: list[Message], params: SamplingParams, *, model: str | None = None
    ) -> AsyncIterator[Delta]:
        """One call, streamed. The last delta has ``finish_reason`` set; ``usage`` on it when known."""
        ...

    # Optional: ``async def start(self) -> None`` for a backend with a slow start (a local engine). The backend
    # awaits it before each call's timeout begins; it must return at once when already started.

    async def aclose(self) -> None:
        """Release sessions, engines and processes. Safe to call twice."""
        ...


# ---- what aggregators and defenses call --------------------------------------------------------------------


class Caller(Protocol):
    """One model with its sampling, bound to a place in one request and to that request's trace."""

    async def generate(
        self, messages: list[Message], n: int = 1, step: str | None = None, stop: Sequence[str] = ()
    ) -> GenerateResult:
        """One logical call (with the backend's retries); ``step`` adds to the trace record's step. ``stop``: the
        prompt's markup (``moa.prompts.REFERENCE_STOPS``), added to the call's own stop strings; no text past a
        stop string comes back, and markup cut short at the end is dropped (``moa.stops``)."""
        ...

    def stream(
        self, messages: list[Message], step: str | None = None, stop: Sequence[str] = ()
    ) -> AsyncGenerator[Delta, None]:
        """One logical call, streamed; ``stop`` as for ``generate`` (a piece that may start one is held back)."""
        ...


class Aggregator(Protocol):
    """References in, one answer out, made with the ``Caller`` it is handed."""

    async def aggregate(self, request: ChatRequest, references: list[Proposal], caller: Caller) -> Generation:
        """The final answer, whole."""
        ...

    def stream(self, request: ChatRequest, references: list[Proposal], caller: Caller) -> AsyncIterator[Delta]:
        """The final answer, streamed; the last delta has ``finish_reason`` set."""
        ...


# ---- defenses ----------------------------------------------------------------------------------------------

#: The trusted aggregator over some proposals; the string says what the call is for, in the trace.
Aggregate = Callable[[list[Proposal], str], Awaitable[Generation]]


@dataclass(frozen=True, slots=True)
class DefenseOutcome:
    references: list[Proposal]  # what goes on: the next layer's references, or the final aggregator's
    record: DefenseRecord
    answer: Generation | None = None  # a finished final answer (only when ``final``)


class Defense(Protocol):
    between_layers: bool

    async def apply(
        self, request: ChatRequest, proposals: list[Proposal], aggregate: Aggregate, *, final: bool, ctx: RequestContext
    ) -> DefenseOutcome:
        """Screen one layer's proposals; ``final`` when the final aggregator comes next. ``ctx``: the request's,
        with ``ctx.embeddings`` the site its embedding calls are recorded at (hand it to the embedder)."""
        ...


class Embeddings(Protocol):
    """One embeddings call's answer: a vector per input, in input order."""

    @property
    def vectors(self) -> list[list[float]]: ...


class EmbeddingsBackend(Protocol):
    """An embeddings endpoint behind limits, retries and a timeout; each call appends one record to ``ctx.trace``."""

    async def embed(self, texts: list[str], *, model: str, site: CallSite, ctx: RequestContext) -> Embeddings: ...

    async def aclose(self) -> None: ...
