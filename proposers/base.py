"""The one protocol every model backend implements.

A proposer makes single attempts: it knows nothing of layers, retries or rate limits (the engine wraps those
around it). It raises only ``moa.errors.BackendError`` subclasses, mapping its own library's failures in one
place.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol, runtime_checkable

from moa.types import Delta, GenerateResult, Message, SamplingParams


@runtime_checkable
class Proposer(Protocol):
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

    # Optional: ``async def start(self) -> None`` for a backend with a slow start (a local engine). The engine
    # awaits it before each call's timeout begins; it must return at once when already started.

    async def aclose(self) -> None:
        """Release sessions, engines and processes. Safe to call twice."""
        ...
