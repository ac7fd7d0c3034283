"""A pairwise judge: which of two answers to an instruction is better, as a probability.

The judge is one model of a configured backend (any type the registry knows), called through the engine's
``Backend`` so its rate limits, retries and timeout apply. Small judges prefer a position (a 135M model wrote
"A" to every pair), so each pair is shown in both orders by default, or, to halve the calls, in a balanced
order (exactly half the pairs with the model's answer first, which half drawn from a seed); either way a
judge's position bias cancels out of the win rate instead of deciding it, and the report shows the bias. The
judge is asked for a single letter; when the backend returns log-probabilities the preference is the
probability mass on the model's letter against the other's, else the letter it wrote decides (1 or 0).
"""

from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Literal

from moa.alpaca_eval.data import OPERATIONAL_FIELDS, digest
from moa.backend import Backend, CallSite
from moa.config import EnsembleConfig
from moa.context import RequestContext
from moa.errors import ConfigError, MoaError
from moa.types import Message, SamplingParams, TopLogprobs

JUDGE_SYSTEM = (
    "You compare two answers to the same user request and decide which one serves the user better. Weigh, in "
    "this order: whether the answer does what was asked, whether it is correct, and whether it is clear and "
    "useful. Length is not a merit in itself: a longer answer wins only when the extra content helps. Ignore "
    "the order in which the answers are shown."
)

JUDGE_PROMPT = """\
User request:
<request>
{instruction}
</request>

Answer A:
<answer_a>
{first}
</answer_a>

Answer B:
<answer_b>
{second}
</answer_b>

Which answer is better? Reply with the single letter A or B, and nothing else."""

_MARKUP = " \t\n*_`'\"()[]:."
_VERDICT = re.compile(r"\b([AB])\b")
_NAMED = re.compile(r"\banswer[\s_-]*([ab])\b", re.IGNORECASE)  # "Answer A", "<answer_b>"


@dataclass(frozen=True, slots=True)
class JudgeVerdict:
    """One judge call's decision on a pair: which answer it prefers, read from logprobs or its reply."""

    p_model: float  # probability that the model's answer is the better one
    source: Literal["logprobs", "verdict"]
    text: str
    tokens: int
    model_first: bool  # the model's answer was shown as A

    @property
    def preferred_position(self) -> Literal["A", "B"] | None:
        """The letter the judge preferred (None for an even split of its probability)."""
        p_model_position = self.p_model if self.model_first else 1.0 - self.p_model  # P(A is better)
        return "A" if p_model_position > 0.5 else "B" if p_model_position < 0.5 else None


#: how each pair is shown: both orders (two calls a pair) or one, with exactly half of the pairs each way
ORDERS = ("both", "balanced")
JudgeOrder = Literal["both", "balanced"]


def balanced_orders(seed: int, instructions: list[str]) -> list[bool]:
    """Whether the model's answer goes first, per instruction: exactly half (rounded up) of them, chosen by a
    hash of seed and instruction, so a rerun draws the same orders."""
    keys = [hashlib.sha256(f"{seed}\x00{text}".encode()).digest() for text in instructions]
    ranked = sorted(range(len(instructions)), key=lambda i: keys[i])
    first = set(ranked[: (len(instructions) + 1) // 2])
    return [i in first for i in range(len(instructions))]


def orders_of(order: JudgeOrder, seed: int, instructions: list[str]) -> list[tuple[bool, ...]]:
    """Per instruction, the orders its pair is judged in (``True``: the model's answer is shown as A)."""
    if order == "both":
        return [(True, False)] * len(instructions)
    return [(first,) for first in balanced_orders(seed, instructions)]


def judge_messages(instruction: str, first: str, second: str) -> list[Message]:
    prompt = JUDGE_PROMPT.format(instruction=instruction, first=first, second=second)
    return [Message("system", JUDGE_SYSTEM), Message("user", prompt)]


def _letter(token: str) -> str | None:
    stripped = token.strip(_MARKUP)
    return stripped if stripped in ("A", "B") else None


def second_preferred_from_logprobs(positions: tuple[TopLogprobs, ...]) -> float | None:
    """P(B) / (P(A) + P(B)) at the first position whose likeliest token is a letter (else the first with any)."""
    with_letters = [p for p in positions if any(_letter(t) for t, _ in p)]
    if not with_letters:
        return None
    top = next((p for p in with_letters if _letter(p[0][0])), with_letters[0])
    mass = {"A": 0.0, "B": 0.0}
    for token, logprob in top:
        if (letter := _letter(token)) is not None:
            mass[letter] += math.exp(logprob)
    total = mass["A"] + mass["B"]
    return mass["B"] / total if total > 0 else None


def second_preferred_from_text(text: str) -> float | None:
    """1.0 for B, 0.0 for A: the first standalone capital letter, else the first "answer X" it names."""
    match = _VERDICT.search(text) or _NAMED.search(text)
    return None if match is None else float(match.group(1).upper() == "B")


class PairwiseJudge:
    """One judge model; ``judge`` returns a ``JudgeVerdict`` or raises a ``MoaError`` (after the backend's retries)."""

    def __init__(
        self,
        backend: Backend,
        model: str,
        *,
        logprobs: int | None = 5,
        max_tokens: int = 16,
        backend_settings: str = "",
    ) -> None:
        self.backend = backend
        self.model = model
        self.params = SamplingParams(temperature=0.0, max_tokens=max_tokens, logprobs=logprobs)
        #: what its verdicts depend on: the backend's settings (operational ones aside), model, prompt, logprobs
        self.fingerprint = digest([backend_settings, model, logprobs, max_tokens, JUDGE_SYSTEM, JUDGE_PROMPT])

    @classmethod
    def from_config(
        cls, config: EnsembleConfig, backend: str | None = None, model: str | None = None, logprobs: int | None = 5
    ) -> PairwiseJudge:
        """The judge named by a config: ``backend`` (default: the aggregator's) and its model."""
        name = backend or config.aggregator.backend
        if name not in config.backends:
            raise ConfigError(
                f"unknown backend {name!r} (known: {', '.join(sorted(config.backends))})", "--judge-backend"
            )
        bc = config.backends[name]
        own = config.aggregator.model if name == config.aggregator.backend else None
        chosen = model or own or getattr(bc, "model", None)
        if not chosen:
            raise ConfigError(f"backend {name!r} names no default model; pass one", "--judge-model")
        settings = digest(bc.model_dump(mode="json", exclude=set(OPERATIONAL_FIELDS)))
        return cls(Backend.from_config(name, bc), chosen, logprobs=logprobs, backend_settings=settings)

    @property
    def name(self) -> str:
        return f"{self.backend.name}:{self.model}"

    async def judge(
        self, instruction: str, model_output: str, reference_output: str, model_first: bool
    ) -> JudgeVerdict:
        first, second = (model_output, reference_output) if model_first else (reference_output, model_output)
        messages = judge_messages(instruction, first, second)
        site = CallSite(1, "aggregator", "judge")
        result = await self.backend.generate(messages, self.params, model=self.model, site=site, ctx=RequestContext())
        generation = result.generations[0]
        source: Literal["logprobs", "verdict"] = "logprobs"
        p_second = second_preferred_from_logprobs(generation.logprobs) if generation.logprobs else None
        if p_second is None:
            source, p_second = "verdict", second_preferred_from_text(generation.text)
        if p_second is None:
            raise MoaError(f"the judge's answer names neither A nor B: {generation.text[:80]!r}")
        p_model = 1.0 - p_second if model_first else p_second
        return JudgeVerdict(p_model, source, generation.text, result.usage.total_tokens, model_first)

    async def aclose(self) -> None:
        await self.backend.aclose()


__all__ = [
    "JUDGE_PROMPT",
    "JUDGE_SYSTEM",
    "ORDERS",
    "JudgeOrder",
    "JudgeVerdict",
    "PairwiseJudge",
    "balanced_orders",
    "judge_messages",
    "orders_of",
]
