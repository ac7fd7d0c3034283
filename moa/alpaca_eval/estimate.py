"""``moa alpaca-eval generate --estimate``: the calls, worst-case tokens, cost and time of a whole job, before it
runs.

Worst case: every call writes its ``max_tokens`` (512 where unset, the limiter's guess), each later layer reads
every proposal of the layer before at that length, the aggregator makes the calls its config plans
(``AggregatorBase.calls``: one for synthesis, one a window for Self-MoA-Seq), and prompts are bounded at one token
a UTF-8 byte plus a few a message (``moa.budget.prompt_tokens_bound``, the bound a budget holds). A defense's extra
calls are not counted.

Cost: backends in this process (``in_process``: ``vllm``, ``torch``) cost $0; a remote one without ``prices`` makes the cost unknown, and
the line names it. Time is a stated model, not a measurement: a remote call takes ``REMOTE_CALL_S`` plus its
completion at ``REMOTE_TOKENS_PER_S``, ``concurrency`` instructions run at once, each waiting for its layers one
after the other (a layer as long as its longest call), and no backend goes faster than its ``rate_limit.rps``;
local backends decode ``LOCAL_TOKENS_PER_S`` completion tokens a second in all (SmolLM2-135M in CPU vLLM here:
6 x 256 tokens in ~46 s on 2 AVX2 cores), one after the other with the remote work.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from moa.budget import prompt_tokens_bound, utf8_bytes
from moa.config import AgentConfig, AggregatorBase, EnsembleConfig
from moa.prompts import SYNTHESIZE_INSTRUCTIONS

#: the completion length assumed for a call without ``max_tokens``
UNSET_MAX_TOKENS = 512
#: bytes of fencing around each reference in a prompt
FENCE_CHARS = 64
#: the time model (see the module's docstring)
REMOTE_CALL_S = 1.0
REMOTE_TOKENS_PER_S = 50.0
LOCAL_TOKENS_PER_S = 33.0

#: what makes a call: an agent or the aggregator
Call = AgentConfig | AggregatorBase


@dataclass(slots=True)
class JobEstimate:
    instructions: int
    calls: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0  # None when a remote backend has no prices
    unpriced: list[str] = field(default_factory=list)  # remote backends without prices
    local_tokens: int = 0  # completion tokens written by local backends
    remote_path_s: float = 0.0  # summed over instructions: each one's remote critical path
    calls_by_backend: dict[str, int] = field(default_factory=dict)
    concurrency: int = 32
    rps: dict[str, float] = field(default_factory=dict)

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens

    def add(self, config: EnsembleConfig, call: Call, calls: int, *, prompt: int, completion: int) -> None:
        """``calls`` calls of ``prompt`` and ``completion`` tokens each, made by ``call``."""
        backend, model = call.backend, call.model
        self.calls += calls
        self.prompt_tokens += calls * prompt
        self.completion_tokens += calls * completion
        self.calls_by_backend[backend] = self.calls_by_backend.get(backend, 0) + calls
        settings = config.backends[backend]
        if settings.in_process:
            self.local_tokens += calls * completion
            return  # local: no money spent
        if settings.rate_limit is not None and settings.rate_limit.rps is not None:
            self.rps[backend] = settings.rate_limit.rps
        prices = settings.prices
        if prices is None:
            if backend not in self.unpriced:
                self.unpriced.append(backend)
            self.cost_usd = None
            return
        if self.cost_usd is not None:
            self.cost_usd += calls * prices.for_model(config.model_for(backend, model)).cost_usd(prompt, completion)

    def wall_s(self) -> float:
        """The time model's figure for the whole job (module docstring)."""
        waves = math.ceil(self.instructions / max(1, self.concurrency))
        remote = self.remote_path_s / max(1, self.instructions) * waves
        limited = max((self.calls_by_backend[b] / rps for b, rps in self.rps.items()), default=0.0)
        return max(remote, limited) + self.local_tokens / LOCAL_TOKENS_PER_S

    def line(self) -> str:
        if self.cost_usd is None:
            cost = f"cost unknown (no prices for backend(s) {', '.join(self.unpriced)})"
        else:
            cost = f"at most ${self.cost_usd:.4f}" + (" (local backends: $0)" if self.local_tokens else "")
        assumed = []
        if self.local_tokens:
            assumed.append(f"local models at {LOCAL_TOKENS_PER_S:g} tokens/s in all")
        if self.local_tokens < self.completion_tokens:
            assumed.append(
                f"remote calls {REMOTE_CALL_S:g} s + {REMOTE_TOKENS_PER_S:g} tokens/s, {self.concurrency} instructions "
                "at once, each backend's rps"
            )
        return (
            f"estimate for {self.instructions} instruction(s): {self.calls} calls, at most {self.total_tokens} tokens "
            f"({self.prompt_tokens} prompt, {self.completion_tokens} completion), {cost}, about "
            f"{_duration(self.wall_s())} at worst (assumes {'; '.join(assumed)})"
        )


def _duration(seconds: float) -> str:
    s = round(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"


def _remote_s(config: EnsembleConfig, backend: str, completion: int) -> float:
    """The time model's seconds for one call (0 for a local backend: its tokens are timed in all)."""
    if config.backends[backend].in_process:
        return 0.0
    return REMOTE_CALL_S + completion / REMOTE_TOKENS_PER_S


def estimate_job(config: EnsembleConfig, instructions: list[str], concurrency: int = 32) -> JobEstimate:
    """The worst case of answering every one of ``instructions`` with ``config``, ``concurrency`` at a time."""
    job = JobEstimate(len(instructions), concurrency=concurrency)
    for text in instructions:
        references: list[int] = []  # the previous layer's proposals, in tokens
        for layer in config.layers:
            made: list[int] = []
            job.remote_path_s += max(
                _remote_s(config, a.backend, a.max_tokens or UNSET_MAX_TOKENS) for a in layer.agents
            )
            for agent in layer.agents:
                completion = agent.max_tokens or UNSET_MAX_TOKENS
                prompt = _prompt(text, references, agent.system_prompt)
                one_call = config.backends[agent.backend].one_call_for_n
                calls, per_call = (1, completion * agent.n) if one_call else (agent.n, completion)
                job.add(config, agent, calls, prompt=prompt, completion=per_call)
                made += [completion] * agent.n
            references = made
        agg = config.aggregator
        completion = agg.max_tokens or UNSET_MAX_TOKENS
        for call in agg.calls(len(references)):
            read = [references[i] for i in call.proposals] + ([completion] if call.reads_previous else [])
            job.remote_path_s += _remote_s(config, agg.backend, completion)
            job.add(config, agg, 1, prompt=_prompt(text, read, agg.system_prompt), completion=completion)
    return job


def _prompt(text: str, references: list[int], system_prompt: str | None) -> int:
    """The worst-case prompt tokens of one call: the instruction, its instructions and the references."""
    size = utf8_bytes([text, system_prompt or ""])
    if references:
        size += utf8_bytes([SYNTHESIZE_INSTRUCTIONS]) + FENCE_CHARS * len(references)
    return prompt_tokens_bound(size, 2) + sum(references)


__all__ = ["JobEstimate", "estimate_job"]
