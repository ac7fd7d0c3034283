"""Tiny random Llama models for the speculative decoding tests (a few layers, a small vocabulary), and a
fixture that runs a test module on one torch thread."""

from __future__ import annotations

import copy
from collections import Counter

import pytest
import torch
from transformers import LlamaConfig, LlamaForCausalLM


@pytest.fixture(scope="module")
def single_thread():
    """One torch thread for a module: small models gain nothing from a second one, and on a busy shared
    machine a second thread mostly waits for a core."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def tiny_llama(seed: int, vocab: int = 8, layers: int = 2, sharpness: float = 4.0) -> LlamaForCausalLM:
    """A random model whose next-token distributions are far from uniform (``sharpness`` scales the head)."""
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=vocab, hidden_size=16, intermediate_size=32, num_hidden_layers=layers, num_attention_heads=2,
        num_key_value_heads=1, max_position_embeddings=256, tie_word_embeddings=False, bos_token_id=0,
        eos_token_id=None, pad_token_id=None,
    )  # fmt: skip
    model = LlamaForCausalLM(config).eval().requires_grad_(False)
    model.lm_head.weight.mul_(sharpness)
    return model


def near_copy(model: LlamaForCausalLM, noise: float, seed: int) -> LlamaForCausalLM:
    """The model with Gaussian noise on every weight: a draft that agrees with it often, not always."""
    torch.manual_seed(seed)
    other = copy.deepcopy(model)
    for p in other.parameters():
        p.add_(noise * p.std() * torch.randn_like(p))
    return other


@torch.inference_mode()
def exact_pair_distribution(model: LlamaForCausalLM, prompt: list[int]) -> dict[tuple[int, int], float]:
    """The model's exact distribution (temperature 1) of its 2nd and 3rd new tokens, by enumeration."""
    vocab = model.config.vocab_size

    def probs(seq: list[int]) -> torch.Tensor:
        return torch.softmax(model(torch.tensor([prompt + seq])).logits[0, -1].double(), -1)

    out: Counter = Counter()
    p1 = probs([])
    for a in range(vocab):
        p2 = probs([a])
        for b in range(vocab):
            p3 = probs([a, b])
            for c in range(vocab):
                out[(b, c)] += float(p1[a] * p2[b] * p3[c])
    return dict(out)


def total_variation(counts: Counter, exact: dict, n: int) -> float:
    keys = set(counts) | set(exact)
    return 0.5 * sum(abs(counts.get(k, 0) / n - exact.get(k, 0.0)) for k in keys)


__all__ = ["exact_pair_distribution", "single_thread", "near_copy", "tiny_llama", "total_variation"]
