"""What an aggregator is: references in, one answer out, made with the model caller it is handed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Protocol

from moa.backend import ModelCaller
from moa.types import ChatRequest, Delta, Generation, Proposal


class Aggregator(Protocol):
    async def aggregate(self, request: ChatRequest, references: list[Proposal], caller: ModelCaller) -> Generation:
        """The final answer, whole."""
        ...

    def stream(self, request: ChatRequest, references: list[Proposal], caller: ModelCaller) -> AsyncIterator[Delta]:
        """The final answer, streamed; the last delta has ``finish_reason`` set."""
        ...
