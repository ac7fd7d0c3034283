"""The seams between the engine and its parts, at the bottom of the dependency graph.

Proposers, aggregators and defenses implement these protocols; the engine and the backend use them. This module
imports only ``moa.types`` and ``moa.errors``, so every layer may import it and none imports upward through it.
``Caller`` is what an aggregator or a defense is handed to make model calls (``moa.backend.ModelCaller``);
``EmbeddingsBackend`` is what an OpenAI-compatible embedder calls (``moa.backend.Backend``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal, Protocol, runtime_checkable

from moa.types import (
    CallRecord,
    ChatRequest,
    DefenseRecord,
    Delta,
    GenerateResult,
    Generation,
    Message,
    Proposal,
    SamplingParams,
)

CallRole = Literal["proposer", "aggregator", "defense"]


@dataclass(frozen=True, slots=True)
class CallSite:
    """Where a call sits in a request, for its trace record."""

    layer: int
    role: CallRole
    agent: str
    step: str | None = None


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
        self, request: ChatRequest, proposals: list[Proposal], aggregate: Aggregate, final: bool
    ) -> DefenseOutcome:
        """Screen one layer's proposals; ``final`` when the final aggregator comes next."""
        ...


class Embeddings(Protocol):
    """One embeddings call's answer: a vector per input, in input order."""

    @property
    def vectors(self) -> list[list[float]]: ...


class EmbeddingsBackend(Protocol):
    """An embeddings endpoint behind limits, retries and a timeout; each call appends one record to ``trace``."""

    async def embed(self, texts: list[str], model: str, site: CallSite, trace: list[CallRecord]) -> Embeddings: ...

    async def aclose(self) -> None: ...


@dataclass(frozen=True, slots=True)
class EmbeddingCalls:
    """Where a request's embedding calls go in its trace: set by the engine around a defense (``traced_at``)."""

    site: CallSite
    trace: list[CallRecord]


#: where embedding calls made now are recorded; ``None`` outside a defense's step
embedding_calls: ContextVar[EmbeddingCalls | None] = ContextVar("moa_embedding_calls", default=None)


@contextmanager
def traced_at(site: CallSite, trace: list[CallRecord]) -> Iterator[None]:
    """Embedding calls made inside (also in tasks started inside) get a record in ``trace`` at ``site``."""
    token = embedding_calls.set(EmbeddingCalls(site, trace))
    try:
        yield
    finally:
        embedding_calls.reset(token)
