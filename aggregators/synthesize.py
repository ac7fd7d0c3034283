"""MoA synthesis: one call that reads every reference and writes one refined answer (stopping where it would
start writing a reference fence of its own)."""

from __future__ import annotations

from collections.abc import AsyncGenerator

from moa.config import ReferencesAt, SynthesizeConfig
from moa.interfaces import Caller
from moa.prompts import REFERENCE_STOPS, SYNTHESIZE_INSTRUCTIONS, with_references
from moa.types import ChatRequest, Delta, Generation, Message, Proposal


class SynthesizeAggregator:
    def __init__(self, config: SynthesizeConfig, references_at: ReferencesAt = "end") -> None:
        self.instructions = config.system_prompt or SYNTHESIZE_INSTRUCTIONS
        self.references_at = references_at

    def messages(self, request: ChatRequest, references: list[Proposal]) -> list[Message]:
        texts = [r.text for r in references]
        return with_references(request.messages, texts, self.instructions, self.references_at)

    async def aggregate(self, request: ChatRequest, references: list[Proposal], caller: Caller) -> Generation:
        result = await caller.generate(self.messages(request, references), stop=REFERENCE_STOPS)
        return result.generations[0]

    def stream(self, request: ChatRequest, references: list[Proposal], caller: Caller) -> AsyncGenerator[Delta, None]:
        return caller.stream(self.messages(request, references), stop=REFERENCE_STOPS)
