"""The acceptance rules themselves, on explicit distributions: the sampled rule reproduces the target's
distribution (and an always-accept rule, the negative control, does not); greedy keeps the argmax prefix."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from proposers.specdec.sampling import Sampler, expand_vocab, make_generator, top_p_filter
from proposers.specdec.verify import Draft, VerifyResult, residual, verify, verify_greedy

P = torch.tensor([0.50, 0.25, 0.15, 0.07, 0.03])  # the target's next-token distribution
Q = torch.tensor([0.05, 0.10, 0.15, 0.30, 0.40])  # a draft that disagrees with it
P_NEXT = torch.tensor([0.1, 0.2, 0.3, 0.2, 0.2])  # the target's distribution after the draft token (bonus)


def always_accept(draft: Draft, target_logits: torch.Tensor, sampler: Sampler) -> VerifyResult:
    """Negative control: keeps every draft token, as a broken verifier would."""
    return VerifyResult(len(draft), int(sampler.draw(sampler.probs(target_logits[len(draft)]))))


def first_token_counts(verifier, deterministic: bool, n: int) -> Counter:
    sampler = Sampler(1.0, 1.0, make_generator(0))
    logits = torch.stack([P, P_NEXT]).log()  # [K+1, V]: temperature 1 gives back P and P_NEXT
    counts: Counter = Counter()
    for _ in range(n):
        token = int(sampler.draw(Q))
        draft = Draft([token]) if deterministic else Draft([token], Q[None])
        verdict = verifier(draft, logits, sampler)
        counts[token if verdict.accepted else verdict.next_token] += 1
    return counts


def tv(counts: Counter, p: torch.Tensor, n: int) -> float:
    return 0.5 * sum(abs(counts[i] / n - float(p[i])) for i in range(len(p)))


@pytest.mark.parametrize("deterministic", [False, True], ids=["model-draft", "lookup-draft"])
def test_sampled_rule_gives_the_target_distribution_and_catches_always_accept(deterministic: bool) -> None:
    n, bound = 4000, 0.045  # expected TV at this n is about 0.013; TV(Q, P) is 0.6
    assert tv(first_token_counts(verify, deterministic, n), P, n) < bound
    assert tv(first_token_counts(always_accept, deterministic, n), P, n) > bound


def test_bonus_token_comes_from_the_next_distribution() -> None:
    sampler = Sampler(1.0, 1.0, make_generator(1))
    logits = torch.stack([P, P_NEXT]).log()
    same = Draft([0], P[None])  # q == p: always accepted, then the bonus
    counts = Counter(verify(same, logits, sampler).next_token for _ in range(4000))
    assert tv(counts, P_NEXT, 4000) < 0.045


def test_greedy_keeps_the_prefix_equal_to_the_argmax() -> None:
    logits = torch.nn.functional.one_hot(torch.tensor([3, 1, 4, 1]), 6).float()  # argmax rows: 3, 1, 4, 1
    assert verify_greedy(Draft([3, 1, 4]), logits) == VerifyResult(3, 1)
    assert verify_greedy(Draft([3, 2, 4]), logits) == VerifyResult(1, 1)
    assert verify_greedy(Draft([0, 1, 4]), logits) == VerifyResult(0, 3)
    assert verify_greedy(Draft([]), logits[:1]) == VerifyResult(0, 3)


def test_residual_removes_the_draft_mass() -> None:
    r = residual(P, Draft([0], Q[None]), 0)
    assert torch.allclose(r, (P - Q).clamp(min=0) / (P - Q).clamp(min=0).sum())
    r = residual(P, Draft([0]), 0)  # deterministic draft: the rejected token can never come back
    assert r[0] == 0 and torch.isclose(r.sum(), torch.tensor(1.0))


def test_top_p_keeps_the_smallest_nucleus() -> None:
    kept = top_p_filter(P, 0.7)  # 0.50 + 0.25 reaches 0.7
    assert torch.allclose(kept, torch.tensor([0.50, 0.25, 0, 0, 0]) / 0.75)
    assert torch.allclose(top_p_filter(P, 1.0), P)


def test_expand_vocab_places_rows_at_their_token_ids() -> None:
    probs = torch.tensor([[0.25, 0.75]])
    assert expand_vocab(probs, torch.tensor([1, 4]), 5).tolist() == [[0, 0.25, 0, 0, 0.75]]
    assert expand_vocab(probs, None, 3).tolist() == [[0.25, 0.75, 0]]
