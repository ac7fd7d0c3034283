"""The distribution one request samples from, and drawing from it.

Temperature 0 is greedy (argmax). Otherwise logits are divided by the temperature and cut to the nucleus
(the fewest most likely tokens whose mass reaches ``top_p``). ``repetition_penalty`` comes first: the decode loop
applies it to the logits of each position with the tokens before that position (``Sampler.penalized``). Speculative decoding is lossless with respect
to exactly this processed distribution: the draft samples from its own processed distribution and the
target's processed distribution decides acceptance.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True, slots=True)
class Sampler:
    temperature: float = 1.0
    top_p: float = 1.0
    generator: torch.Generator | None = None
    #: vLLM's (and Hugging Face's) ``repetition_penalty``: the logit of every token already in the prompt or the
    #: output is divided by it when positive and multiplied by it when negative, before anything else (1: none)
    repetition_penalty: float = 1.0

    def penalized(self, logits: Tensor, seen: Sequence[Collection[int]]) -> Tensor:
        """logits: [R, V], one row per collection of token ids already seen (a history, or its set) -> the rows
        with ``repetition_penalty`` applied (the same tensor when there is none)."""
        if self.repetition_penalty == 1.0:
            return logits
        logits = logits.to(torch.float32, copy=True)
        for row, history in enumerate(seen):
            ids = torch.tensor(list(set(history)), dtype=torch.long, device=logits.device)
            values = logits[row, ids]
            logits[row, ids] = torch.where(
                values > 0, values / self.repetition_penalty, values * self.repetition_penalty
            )
        return logits

    @property
    def greedy(self) -> bool:
        return self.temperature <= 0.0

    def probs(self, logits: Tensor) -> Tensor:
        """logits: [..., V] -> probabilities [..., V] (float32), one-hot at the argmax when greedy."""
        logits = logits.float()
        if self.greedy:
            return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
        probs = torch.softmax(logits / self.temperature, dim=-1)
        if self.top_p < 1.0:
            probs = top_p_filter(probs, self.top_p)
        return probs

    def draw(self, probs: Tensor) -> Tensor:
        """probs: [..., V] -> tokens [...] (int64) drawn with this sampler's generator."""
        flat = probs.reshape(-1, probs.shape[-1])
        return torch.multinomial(flat, 1, generator=self.generator).reshape(probs.shape[:-1])

    def pick(self, logits: Tensor) -> Tensor:
        """logits: [..., V] -> tokens [...]: the argmax when greedy, else a draw from ``probs``."""
        if self.greedy:
            return logits.argmax(-1)
        return self.draw(self.probs(logits))

    def uniform(self, n: int) -> Tensor:
        """n draws from U[0, 1) from this sampler's generator: [n]."""
        device = self.generator.device if self.generator is not None else None
        return torch.rand(n, generator=self.generator, device=device)


def top_p_filter(probs: Tensor, top_p: float) -> Tensor:
    """probs: [..., V] -> renormalised probabilities of the smallest set of top tokens with mass >= top_p."""
    sorted_p, order = probs.sort(dim=-1, descending=True)
    mass_before = sorted_p.cumsum(-1) - sorted_p  # mass of strictly more likely tokens
    sorted_p = sorted_p.masked_fill(mass_before >= top_p, 0.0)
    kept = torch.zeros_like(probs).scatter(-1, order, sorted_p)
    return kept / kept.sum(-1, keepdim=True)


def expand_vocab(probs: Tensor, vocab: Tensor | None, size: int) -> Tensor:
    """probs: [..., V'] over a draft's output rows -> [..., size] over the target's vocabulary.

    ``vocab`` gives the token id of each row; without it row i is token i (a draft with fewer rows is padded).
    """
    if vocab is None and probs.shape[-1] == size:
        return probs
    full = probs.new_zeros(*probs.shape[:-1], size)
    if vocab is None:
        full[..., : probs.shape[-1]] = probs
    else:
        full[..., vocab] = probs
    return full


def make_generator(seed: int | None, device: torch.device | str = "cpu") -> torch.Generator:
    """A generator on ``device`` seeded with ``seed`` (a fresh random seed when ``None``)."""
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


__all__ = ["Sampler", "expand_vocab", "make_generator", "top_p_filter"]
