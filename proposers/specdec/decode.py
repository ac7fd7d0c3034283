"""The decode loop: prefill, one-token decode, one speculative step, and generation built from them.

The target's KV cache always holds every token but the newest one (``tokens[-1]``), which the next forward
feeds. A speculative step feeds it together with K draft tokens, keeps the accepted prefix and crops the
rest from the cache. Generators yield the new tokens of each step and return their ``DecodeStats``.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor
from transformers import DynamicCache

from proposers.specdec.sampling import Sampler
from proposers.specdec.verify import Draft, VerifyResult, verify

if TYPE_CHECKING:
    from proposers.specdec.causal_lm import CausalLM


class Drafter(Protocol):
    def propose(self, tokens: list[int], limit: int, sampler: Sampler) -> Draft:
        """At most ``limit`` candidates to follow ``tokens`` (the prompt and the output so far)."""
        ...

    def update(self, drafted: int, accepted: int) -> None:
        """What the target kept of the last draft."""
        ...


Verifier = Callable[[Draft, Tensor, Sampler], VerifyResult]


@dataclass(slots=True)
class DecodeStats:
    prompt_tokens: int = 0
    generated: int = 0
    target_forwards: int = 0  # the prefill included: plain decoding makes exactly one per token
    draft_forwards: int = 0
    drafted: int = 0
    accepted: int = 0
    prefill_s: float = 0.0
    decode_s: float = 0.0

    @property
    def tokens_per_forward(self) -> float:
        return self.generated / max(self.target_forwards, 1)

    @property
    def discarded_per_token(self) -> float:
        return (self.drafted - self.accepted) / max(self.generated, 1)

    @property
    def acceptance(self) -> float:
        return self.accepted / max(self.drafted, 1)

    def add(self, other: DecodeStats) -> None:
        for name in self.__slots__:
            setattr(self, name, getattr(self, name) + getattr(other, name))


def new_cache(model: CausalLM) -> DynamicCache:
    return DynamicCache(config=model.config)


def crop_cache(cache: DynamicCache, length: int) -> None:
    """Drop cached positions beyond ``length`` (the rejected draft tokens)."""
    extra = cache.get_seq_length() - length
    if extra > 0:
        cache.crop(-extra)


def forward(model: CausalLM, ids: Tensor, cache: DynamicCache, keep: int = 1) -> Tensor:
    """ids: [B, S] -> logits [B, keep, V] of the last ``keep`` positions; the cache grows by S."""
    logits: Tensor = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=keep).logits
    return logits


def prefill(model: CausalLM, prompt: list[int], cache: DynamicCache) -> Tensor:
    """The prompt into an empty cache -> logits [V] for the first new token."""
    ids = torch.tensor([prompt], device=model.device)  # [1, S]
    return forward(model, ids, cache)[0, -1]


def decode_one_token(
    model: CausalLM, cache: DynamicCache, tokens: Tensor, sampler: Sampler, seen: list[list[int]] | None = None
) -> Tensor:
    """tokens: [B] (each row's newest token) -> the next tokens [B]; ``seen``: each row's tokens so far, for the
    sampler's ``repetition_penalty``."""
    logits = forward(model, tokens[:, None], cache)[:, -1]  # [B, V]
    return sampler.pick(sampler.penalized(logits, seen) if seen is not None else logits)


def speculative_decode(
    model: CausalLM,
    cache: DynamicCache,
    drafter: Drafter,
    tokens: list[int],
    limit: int,
    sampler: Sampler,
    verifier: Verifier = verify,
) -> tuple[list[int], Draft, VerifyResult]:
    """One step: draft at most ``limit`` tokens, verify them in one target forward, crop the rejected ones.

    Returns the new tokens (the accepted draft tokens and the target's own next token), the draft and the verdict.
    """
    draft = drafter.propose(tokens, limit, sampler)
    k = len(draft)
    ids = torch.tensor([[tokens[-1], *draft.tokens]], device=model.device)  # [1, K+1]
    logits = forward(model, ids, cache, keep=k + 1)[0]  # [K+1, V]
    if sampler.repetition_penalty != 1.0:  # position j follows the tokens and the first j draft tokens
        seen = [set(tokens)]
        for token in draft.tokens:
            seen.append(seen[-1] | {token})
        logits = sampler.penalized(logits, seen)
    verdict = verifier(draft, logits, sampler)
    crop_cache(cache, len(tokens) + verdict.accepted)  # the newest token and the kept draft tokens
    if k:
        drafter.update(k, verdict.accepted)
    return [*draft.tokens[: verdict.accepted], verdict.next_token], draft, verdict


def generate(
    model: CausalLM,
    prompt: list[int],
    sampler: Sampler,
    max_new_tokens: int,
    stop_ids: frozenset[int],
    drafter: Drafter | None = None,
    verifier: Verifier = verify,
) -> Generator[list[int], None, DecodeStats]:
    """One sequence, plain (no drafter) or speculative. Yields each step's new tokens; ends after a stop id."""
    stats = DecodeStats(prompt_tokens=len(prompt))
    cache = new_cache(model)
    started = time.perf_counter()
    penalty = sampler.repetition_penalty != 1.0
    with torch.inference_mode():
        logits = prefill(model, prompt, cache)[None]  # [1, V]
        first = int(sampler.pick(sampler.penalized(logits, [prompt]))[0])
    stats.prefill_s = time.perf_counter() - started
    stats.target_forwards, stats.generated = 1, 1
    tokens = [*prompt, first]
    yield [first]
    while first not in stop_ids and stats.generated < max_new_tokens:
        started = time.perf_counter()
        with torch.inference_mode():
            if drafter is None:
                newest = torch.tensor([tokens[-1]], device=model.device)
                new = decode_one_token(model, cache, newest, sampler, [tokens] if penalty else None).tolist()
            else:
                room = max_new_tokens - stats.generated - 1  # the target's own token always comes too
                new, draft, verdict = speculative_decode(model, cache, drafter, tokens, room, sampler, verifier)
                stats.drafted += len(draft)
                stats.accepted += verdict.accepted
                stats.draft_forwards += draft.forwards
        stats.decode_s += time.perf_counter() - started
        stats.target_forwards += 1
        new = until_stop(new, stop_ids)
        tokens.extend(new)
        stats.generated += len(new)
        yield new
        if new[-1] in stop_ids:
            break
    return stats


def generate_batch(
    model: CausalLM,
    prompt: list[int],
    sampler: Sampler,
    max_new_tokens: int,
    stop_ids: frozenset[int],
    n: int,
    should_stop: Callable[[], bool] = lambda: False,
) -> tuple[list[list[int]], DecodeStats]:
    """``n`` samples of one prompt decoded together (one prefill, then a batch of n rows per step).

    ``should_stop`` is asked before every step; once it says yes the rows so far are returned (a cancelled call).
    """
    stats = DecodeStats(prompt_tokens=len(prompt))
    cache = new_cache(model)
    started = time.perf_counter()
    penalty = sampler.repetition_penalty != 1.0
    with torch.inference_mode():
        logits = sampler.penalized(prefill(model, prompt, cache)[None], [prompt]).expand(n, -1)  # [n, V]
        cache.batch_repeat_interleave(n)
        cur = sampler.pick(logits)  # [n]
        stats.prefill_s = time.perf_counter() - started
        rows = [[t] for t in cur.tolist()]
        done = [t in stop_ids for t in cur.tolist()]
        stats.target_forwards = 1
        started = time.perf_counter()
        while not all(done) and stats.target_forwards < max_new_tokens and not should_stop():
            cur = decode_one_token(model, cache, cur, sampler, [prompt + r for r in rows] if penalty else None)
            stats.target_forwards += 1
            for i, token in enumerate(cur.tolist()):
                if not done[i]:
                    rows[i].append(token)
                    done[i] = token in stop_ids
    stats.decode_s = time.perf_counter() - started
    stats.generated = sum(len(r) for r in rows)
    return rows, stats


def until_stop(new: list[int], stop_ids: frozenset[int]) -> list[int]:
    for i, token in enumerate(new):
        if token in stop_ids:
            return new[: i + 1]
    return new


def run(gen: Generator[list[int], None, DecodeStats]) -> tuple[list[int], DecodeStats]:
    """Drain a ``generate`` generator: all its tokens and its stats."""
    out: list[int] = []
    while True:
        try:
            out.extend(next(gen))
        except StopIteration as end:
            return out, end.value


__all__ = [
    "DecodeStats",
    "Drafter",
    "Verifier",
    "crop_cache",
    "decode_one_token",
    "forward",
    "generate",
    "generate_batch",
    "new_cache",
    "prefill",
    "run",
    "speculative_decode",
    "until_stop",
]
