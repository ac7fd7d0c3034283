"""``moa alpaca-eval generate --estimate``: the calls, worst-case tokens and cost of a whole job, before it runs.

Worst case: every call writes its ``max_tokens`` (512 where unset, the limiter's guess), each later layer and the
aggregator read every proposal of the layer before at that length, and prompts are bounded at one token a UTF-8
byte plus a few a message (``moa.budget.prompt_tokens_bound``, the bound a budget holds). A defense's extra calls
are not counted.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from moa.budget import prompt_tokens_bound, utf8_bytes
from moa.config import EnsembleConfig
from moa.prompts import SYNTHESIZE_INSTRUCTIONS

#: the completion length assumed for a call without ``max_tokens``
UNSET_MAX_TOKENS = 512
#: bytes of fencing around each reference in a prompt
FENCE_CHARS = 64


@dataclass(slots=True)
class JobEstimate:
    instructions: int
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0  # None when a backend has no prices

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, config: EnsembleConfig, backend: str, model: str | None, calls: int, prompt: int,
            completion: int) -> None:  # fmt: skip
        """``calls`` calls of ``prompt`` and ``completion`` tokens each."""
        self.calls += calls
        self.prompt_tokens += calls * prompt
        self.completion_tokens += calls * completion
        prices = config.backends[backend].prices
        if prices is None or self.cost_usd is None:
            self.cost_usd = None
            return
        self.cost_usd += calls * prices.for_model(config.model_for(backend, model)).cost_usd(prompt, completion)

    def line(self) -> str:
        cost = "cost unknown (a backend has no prices)" if self.cost_usd is None else f"at most ${self.cost_usd:.4f}"
        return (
            f"estimate for {self.instructions} instruction(s): {self.calls} calls, at most {self.total_tokens} tokens "
            f"({self.prompt_tokens} prompt, {self.completion_tokens} completion), {cost}"
        )


def _self_moa_seq_steps(samples: int, window: int) -> int:
    return 1 if samples <= window else math.ceil((samples - 1) / (window - 1))


def estimate_job(config: EnsembleConfig, instructions: list[str]) -> JobEstimate:
    """The worst case of answering every one of ``instructions`` with ``config``."""
    job = JobEstimate(len(instructions))
    for text in instructions:
        references: list[int] = []  # the previous layer's proposals, in tokens
        for layer in config.layers:
            made: list[int] = []
            for agent in layer.agents:
                completion = agent.max_tokens or UNSET_MAX_TOKENS
                prompt = _prompt(text, references, agent.system_prompt)
                one_call = getattr(config.backends[agent.backend], "supports_n", True)
                calls, per_call = (1, completion * agent.n) if one_call else (agent.n, completion)
                job.add(config, agent.backend, agent.model, calls, prompt, per_call)
                made += [completion] * agent.n
            references = made
        agg = config.aggregator
        completion = agg.max_tokens or UNSET_MAX_TOKENS
        if agg.type == "self-moa-seq":
            steps = _self_moa_seq_steps(len(references), agg.window)
            window = [completion] * min(agg.window, len(references))
            job.add(config, agg.backend, agg.model, steps, _prompt(text, window, agg.system_prompt), completion)
        else:
            job.add(config, agg.backend, agg.model, 1, _prompt(text, references, agg.system_prompt), completion)
    return job


def _prompt(text: str, references: list[int], system_prompt: str | None) -> int:
    """The worst-case prompt tokens of one call: the instruction, its instructions and the references."""
    size = utf8_bytes([text, system_prompt or ""])
    if references:
        size += utf8_bytes([SYNTHESIZE_INSTRUCTIONS]) + FENCE_CHARS * len(references)
    return prompt_tokens_bound(size, 2) + sum(references)


__all__ = ["JobEstimate", "estimate_job"]
