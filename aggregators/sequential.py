"""Self-MoA-Seq: aggregate many samples through a sliding window, so the prompt stays bounded.

The first step synthesises the first ``window`` samples; every later step sees the running synthesis plus the
next ``window - 1`` samples. For N samples that is ``ceil((N - 1) / (window - 1))`` steps (one when N <= window),
and each sample is read by exactly one step (the plan is the config's: ``SelfMoASeqConfig.calls``). Only the last step may stream. Every step stops where it would
start writing a reference fence (``moa.prompts.REFERENCE_STOPS``).
"""

from __future__ import annotations

from collections.abc import AsyncGenerator
from contextlib import aclosing

from moa.config import ReferencesAt, SelfMoASeqConfig
from moa.interfaces import Caller
from moa.prompts import REFERENCE_STOPS, SEQUENTIAL_INSTRUCTIONS, SYNTHESIZE_INSTRUCTIONS, with_references
from moa.types import ChatRequest, Delta, Generation, Message, Proposal


class SequentialAggregator:
    def __init__(self, config: SelfMoASeqConfig, references_at: ReferencesAt = "end") -> None:
        self.config = config
        self.references_at = references_at
        self.first_instructions = config.system_prompt or SYNTHESIZE_INSTRUCTIONS
        self.next_instructions = SEQUENTIAL_INSTRUCTIONS

    def step_messages(self, request: ChatRequest, running: str | None, samples: list[str]) -> list[Message]:
        if running is None:
            return with_references(request.messages, samples, self.first_instructions, self.references_at)
        return with_references(request.messages, [running, *samples], self.next_instructions, self.references_at)

    async def _until_last(
        self, request: ChatRequest, references: list[Proposal], caller: Caller
    ) -> tuple[str | None, list[str], str]:
        """Run every step but the last; return the running synthesis, the last step's samples and its label."""
        steps = [list(call.proposals) for call in self.config.calls(len(references))]  # the plan the estimate reads
        running: str | None = None
        for i, indices in enumerate(steps[:-1]):
            samples = [references[j].text for j in indices]
            messages = self.step_messages(request, running, samples)
            result = await caller.generate(messages, step=_label(i, steps), stop=REFERENCE_STOPS)
            running = result.generations[0].text
        return running, [references[j].text for j in steps[-1]], _label(len(steps) - 1, steps)

    async def aggregate(self, request: ChatRequest, references: list[Proposal], caller: Caller) -> Generation:
        running, samples, label = await self._until_last(request, references, caller)
        result = await caller.generate(self.step_messages(request, running, samples), step=label, stop=REFERENCE_STOPS)
        return result.generations[0]

    async def stream(
        self, request: ChatRequest, references: list[Proposal], caller: Caller
    ) -> AsyncGenerator[Delta, None]:
        running, samples, label = await self._until_last(request, references, caller)
        async with aclosing(
            caller.stream(self.step_messages(request, running, samples), step=label, stop=REFERENCE_STOPS)
        ) as deltas:
            async for delta in deltas:
                yield delta


def _label(i: int, steps: list[list[int]]) -> str:
    return f"window {i + 1}/{len(steps)}: samples {steps[i][0] + 1}-{steps[i][-1] + 1}"
