"""Deciding which draft tokens the target keeps: the lossless rules of speculative decoding.

Sampled (Leviathan et al. / Chen et al.): draft token d_i, drawn from q_i, is kept with probability
min(1, p_i(d_i) / q_i(d_i)); at the first rejection the next token is drawn from max(0, p_i - q_i)
renormalised; when every draft token is kept the target adds a bonus token drawn from p_{K+1}. The output
is then distributed exactly as the target's own samples. A deterministic draft (reference lookup) has
q_i = one-hot(d_i). Greedy: keep draft tokens while they equal the target's argmax, then take the argmax.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from proposers.specdec.sampling import Sampler


@dataclass(frozen=True, slots=True)
class Draft:
    """Candidate tokens and, for a sampled model draft, the distributions they were drawn from."""

    tokens: list[int]  # [K]
    probs: Tensor | None = None  # [K, V]; None: deterministic proposals (q_i is one-hot at d_i)
    forwards: int = 0  # draft-model forwards spent making it

    def __len__(self) -> int:
        return len(self.tokens)


@dataclass(frozen=True, slots=True)
class VerifyResult:
    """What the target keeps of one draft: an accepted prefix, then a token of its own."""

    accepted: int  # how many draft tokens were kept (a prefix of the draft)
    next_token: int  # the target's own token after them: a correction, or the bonus when all were kept


def verify(draft: Draft, target_logits: Tensor, sampler: Sampler) -> VerifyResult:
    """target_logits: [K+1, V], the target's logits after the last accepted token and after each draft token."""
    if sampler.greedy:
        return verify_greedy(draft, target_logits)
    return verify_sampled(draft, sampler.probs(target_logits), sampler)


def verify_greedy(draft: Draft, target_logits: Tensor) -> VerifyResult:
    best = target_logits.argmax(-1).tolist()  # [K+1]
    n = 0
    while n < len(draft) and draft.tokens[n] == best[n]:
        n += 1
    return VerifyResult(n, best[n])


def verify_sampled(draft: Draft, target_probs: Tensor, sampler: Sampler) -> VerifyResult:
    """target_probs: [K+1, V] (already tempered and top-p filtered)."""
    k = len(draft)
    tokens = torch.tensor(draft.tokens, dtype=torch.long, device=target_probs.device)  # [K]
    p = target_probs[torch.arange(k), tokens]  # [K]
    q = draft.probs[torch.arange(k), tokens] if draft.probs is not None else torch.ones_like(p)  # [K]
    kept = (sampler.uniform(k).to(p.device) * q < p).tolist()  # u < p/q, without dividing by q
    n = kept.index(False) if False in kept else k
    if n == k:
        return VerifyResult(k, int(sampler.draw(target_probs[k])))
    return VerifyResult(n, int(sampler.draw(residual(target_probs[n], draft, n))))


def residual(p: Tensor, draft: Draft, i: int) -> Tensor:
    """p: [V] -> norm(max(0, p - q_i)): what the target still owes after rejecting draft token i."""
    if draft.probs is not None:
        r = (p - draft.probs[i]).clamp_(min=0.0)
    else:
        r = p.clone()
        r[draft.tokens[i]] = 0.0
    total = r.sum()
    # A rejection has probability sum(max(0, q - p)) = sum(max(0, p - q)) > 0, so total > 0 up to rounding.
    return r / total if total > 0 else p


__all__ = ["Draft", "VerifyResult", "residual", "verify", "verify_greedy", "verify_sampled"]
