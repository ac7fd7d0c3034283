"""A draft model with its own KV cache: a smaller model with the target's tokenizer, or a self-draft.

Before each draft it catches up on the tokens the target produced since the last one (usually the last
accepted token and the target's own token: one forward of one or two tokens), cropping whatever of its
cache the target rejected. It then drafts token by token until its length policy says stop; the last
drafted token is never fed to the draft, which saves a forward.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import Tensor

from proposers.specdec.decode import crop_cache, new_cache
from proposers.specdec.policies import LengthPolicy
from proposers.specdec.sampling import Sampler, expand_vocab
from proposers.specdec.verify import Draft

if TYPE_CHECKING:
    from proposers.specdec.causal_lm import CausalLM


class ModelDrafter:
    def __init__(self, model: CausalLM, policy: LengthPolicy, vocab_size: int, vocab: Tensor | None = None):
        """``vocab`` maps the draft's output rows to token ids when its head covers a subset of the vocabulary."""
        self.model = model
        self.policy = policy
        self.vocab_size = vocab_size
        self.vocab = vocab
        self.cache = new_cache(model)
        self.cached: list[int] = []  # the tokens whose keys and values the cache holds

    def _feed(self, ids: list[int]) -> tuple[Tensor, Tensor]:
        """ids: S new tokens -> (logits [V'] and last hidden state [H] at the last of them)."""
        out = self.model(
            input_ids=torch.tensor([ids], device=self.model.device),
            past_key_values=self.cache,
            use_cache=True,
            logits_to_keep=1,
            output_hidden_states=True,
        )
        self.cached.extend(ids)
        return out.logits[0, -1], out.hidden_states[-1][0, -1]

    def _catch_up(self, tokens: list[int]) -> tuple[Tensor, Tensor]:
        """Crop the cache to what still agrees with ``tokens`` and feed the rest (at least the newest token)."""
        same = 0
        for a, b in zip(self.cached, tokens, strict=False):
            if a != b:
                break
            same += 1
        same = min(same, len(tokens) - 1)
        crop_cache(self.cache, same)
        del self.cached[same:]
        return self._feed(tokens[same:])

    def propose(self, tokens: list[int], limit: int, sampler: Sampler) -> Draft:
        budget = min(limit, self.policy.max_len())
        if budget <= 0:
            return Draft([])
        logits, hidden = self._catch_up(tokens)  # [V'], [H]
        drafted, rows, forwards = [], [], 1
        while True:
            probs = torch.softmax(logits.float(), -1) if sampler.greedy else sampler.probs(logits)  # [V']
            row = int(logits.argmax()) if sampler.greedy else int(sampler.draw(probs))
            drafted.append(row if self.vocab is None else int(self.vocab[row]))
            rows.append(probs)
            if len(drafted) >= budget or self.policy.stop(len(drafted), float(probs[row]), hidden):
                break
            logits, hidden = self._feed(drafted[-1:])
            forwards += 1
        return Draft(
            drafted, None if sampler.greedy else expand_vocab(torch.stack(rows), self.vocab, self.vocab_size), forwards
        )

    def update(self, drafted: int, accepted: int) -> None:
        self.policy.update(drafted, accepted)


__all__ = ["ModelDrafter"]
