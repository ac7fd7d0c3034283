"""The decode loop on tiny random models: speculative decoding is lossless for every drafter and policy."""

from __future__ import annotations

from collections import Counter

import pytest
import torch

from proposers.specdec.decode import DecodeStats, crop_cache, generate, new_cache, prefill, run, speculative_decode
from proposers.specdec.head import AcceptanceHead
from proposers.specdec.lookup import LookupDrafter, longest_suffix_match
from proposers.specdec.model_draft import ModelDrafter
from proposers.specdec.policies import AcceptanceStop, Confidence, FixedLength, Heuristic
from proposers.specdec.sampling import Sampler, make_generator
from proposers.specdec.self_draft import SelfDraftSpec, assemble, new_blocks
from proposers.specdec.verify import Draft, VerifyResult, verify
from tests.support.specdec_tiny import exact_pair_distribution, near_copy, single_thread, tiny_llama, total_variation  # noqa: F401 (single_thread: a fixture)

PROMPT = [1, 2, 3, 4, 5, 1, 2, 3, 4, 6, 7, 1, 2]
GREEDY = Sampler(0.0)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def target():
    return tiny_llama(0, vocab=8, layers=3)


@pytest.fixture(scope="module")
def draft(target):
    return near_copy(target, noise=0.05, seed=1)


def head_always(accept: bool, hidden: int = 16) -> AcceptanceHead:
    """A head whose verdict is fixed by its output bias: P(accept) ~ 1 or ~ 0."""
    head = AcceptanceHead(hidden, blocks=2)
    with torch.no_grad():
        head.out.weight.zero_()
        head.out.bias.copy_(torch.tensor([-20.0, 20.0] if accept else [20.0, -20.0]))
    return head


def drafters(target, draft):
    """Every drafter and policy, fresh (drafters hold per-sequence state)."""
    self_draft = assemble(target, SelfDraftSpec(1), new_blocks(target, SelfDraftSpec(1)), vocab=None)
    small_head = assemble(target, SelfDraftSpec(2), new_blocks(target, SelfDraftSpec(2)), torch.tensor([0, 2, 3, 5]))
    return {
        "fixed": ModelDrafter(draft, FixedLength(3), 8),
        "heuristic": ModelDrafter(draft, Heuristic(2, max_k=6), 8),
        "confidence": ModelDrafter(draft, Confidence(0.5, 1, 6), 8),
        "specdec++": ModelDrafter(draft, AcceptanceStop(AcceptanceHead(16), 0.6, 2, 6), 8),
        "reference": LookupDrafter(min_k=2, max_k=6, min_match=1),
        "self-draft": ModelDrafter(self_draft, FixedLength(4), 8),
        "self-draft-subvocab": ModelDrafter(small_head, FixedLength(4), 8, torch.tensor([0, 2, 3, 5])),
    }


POLICIES = ["fixed", "heuristic", "confidence", "specdec++", "reference", "self-draft", "self-draft-subvocab"]


@pytest.mark.parametrize("policy", POLICIES)
def test_greedy_output_is_the_targets_own(target, draft, policy: str) -> None:
    plain, _ = run(generate(target, PROMPT, GREEDY, 48, frozenset()))
    out, stats = run(generate(target, PROMPT, GREEDY, 48, frozenset(), drafters(target, draft)[policy]))
    assert out == plain
    assert stats.generated == 48 and stats.drafted > 0
    if policy in ("fixed", "reference"):  # both keeping and rejecting happened, so the check has teeth
        assert 0 < stats.accepted < stats.drafted


def always_accept(d: Draft, target_logits: torch.Tensor, sampler: Sampler) -> VerifyResult:
    """Negative control: a verifier that keeps every draft token."""
    return VerifyResult(len(d), int(sampler.draw(sampler.probs(target_logits[len(d)]))))


@pytest.mark.parametrize("verifier,lossless", [(verify, True), (always_accept, False)], ids=["verify", "always-accept"])
@pytest.mark.parametrize("kind", ["model-draft", "lookup"])
def test_sampled_output_follows_the_targets_distribution(kind: str, verifier, lossless: bool) -> None:
    """TV between the empirical and the exact distribution of the 2nd and 3rd tokens, which one verified
    draft of two produces; the always-accept verifier (the negative control) must fail the same bound."""
    target, other = tiny_llama(3, vocab=4, layers=1), tiny_llama(4, vocab=4, layers=1)  # a draft far from the target
    prompt = [1, 2, 3] if kind == "model-draft" else [1, 2, 3, 1, 2, 0, 1, 2, 3]  # lookups find matches
    n, bound = 600, 0.12  # honest runs measured 0.05-0.08 at n=500; the controls 0.18-0.20 and 0.6
    exact = exact_pair_distribution(target, prompt)
    sampler = Sampler(1.0, 1.0, make_generator(0))
    pairs: Counter = Counter()
    drafted = 0
    for _ in range(n):
        drafter = ModelDrafter(other, FixedLength(2), 4) if kind == "model-draft" else LookupDrafter(2, 4, 1)
        out, stats = run(generate(target, prompt, sampler, 4, frozenset(), drafter, verifier))
        pairs[tuple(out[1:3])] += 1
        drafted += stats.drafted
    assert drafted > n
    assert (total_variation(pairs, exact, n) < bound) is lossless


class Proposals:
    """A drafter that proposes given tokens (the input of the crop test)."""

    def __init__(self, tokens: list[int]):
        self.tokens = tokens

    def propose(self, tokens: list[int], limit: int, sampler: Sampler) -> Draft:
        return Draft(self.tokens[:limit])

    def update(self, drafted: int, accepted: int) -> None:
        pass


def test_kv_cache_is_cropped_to_the_accepted_tokens(target) -> None:
    plain, _ = run(generate(target, PROMPT, GREEDY, 6, frozenset()))
    wrong = (plain[3] + 1) % 8
    cache = new_cache(target)
    with torch.inference_mode():
        prefill(target, PROMPT, cache)
        tokens = [*PROMPT, plain[0]]
        new, d, verdict = speculative_decode(
            target, cache, Proposals([plain[1], plain[2], wrong, 0]), tokens, 4, GREEDY
        )
    assert verdict.accepted == 2 and new == plain[1:4]
    assert cache.get_seq_length() == len(tokens) + 2  # the newest token and the two kept, not the rejected two
    fresh = new_cache(target)
    with torch.inference_mode():
        prefill(target, [*tokens, plain[1], plain[2]], fresh)
    for kept, ref in zip(cache.layers, fresh.layers, strict=True):
        assert torch.allclose(kept.keys, ref.keys, atol=1e-5) and torch.allclose(kept.values, ref.values, atol=1e-5)
    crop_cache(fresh, 3)
    assert fresh.get_seq_length() == 3


def test_eos_inside_the_candidates_ends_the_output_there(target) -> None:
    plain, _ = run(generate(target, PROMPT, GREEDY, 30, frozenset()))
    for eos in set(plain):  # the stop token lands at every place in a draft: first, middle, last, bonus
        out, _ = run(generate(target, PROMPT, GREEDY, 30, frozenset({eos}), ModelDrafter(target, FixedLength(4), 8)))
        assert out == plain[: plain.index(eos) + 1]


class Recording:
    """Wraps a drafter and records the length of each draft."""

    def __init__(self, inner):
        self.inner, self.lengths, self.limits = inner, [], []

    def propose(self, tokens: list[int], limit: int, sampler: Sampler) -> Draft:
        d = self.inner.propose(tokens, limit, sampler)
        self.lengths.append(len(d))
        self.limits.append(limit)
        return d

    def update(self, drafted: int, accepted: int) -> None:
        self.inner.update(drafted, accepted)


@pytest.mark.parametrize(
    "policy,expected",
    [
        (Confidence(1e-12, 2, 5), 5),  # never unsure: drafts run to max_k
        (Confidence(0.999999, 2, 5), 2),  # always unsure: drafts stop at min_k
        (AcceptanceStop(head_always(True), 0.5, 2, 5), 5),
        (AcceptanceStop(head_always(False), 0.5, 2, 5), 2),
        (FixedLength(3), 3),
    ],
)
def test_candidate_length_bounds_are_honoured(target, draft, policy, expected: int) -> None:
    rec = Recording(ModelDrafter(draft, policy, 8))
    out, _ = run(generate(target, PROMPT, GREEDY, 23, frozenset(), rec))
    assert len(out) == 23
    assert all(n == min(expected, limit) for n, limit in zip(rec.lengths, rec.limits, strict=True))


def test_heuristic_and_lookup_stay_within_bounds(target, draft) -> None:
    heuristic = Recording(ModelDrafter(draft, Heuristic(2, max_k=5), 8))
    lookup = Recording(LookupDrafter(min_k=2, max_k=3, min_match=1))
    for rec in (heuristic, lookup):
        out, _ = run(generate(target, PROMPT * 3, GREEDY, 40, frozenset(), rec))
        assert len(out) == 40 and all(n <= min(limit, 5) for n, limit in zip(rec.lengths, rec.limits, strict=True))
    assert max(heuristic.lengths) > 2  # it grew after fully accepted drafts
    assert max(lookup.lengths) <= 3


def test_longest_suffix_match_finds_the_latest_longest_occurrence() -> None:
    import numpy as np

    assert longest_suffix_match(np.array([5, 1, 2, 9, 1, 2, 7, 1, 2])) == (2, 5)
    assert longest_suffix_match(np.array([3, 1, 2, 9, 8, 1, 2, 3, 1, 2])) == (3, 2)
    assert longest_suffix_match(np.array([1, 2, 3])) == (0, -1)


def test_stats_count_forwards_and_discards(target, draft) -> None:
    _, plain = run(generate(target, PROMPT, GREEDY, 20, frozenset()))
    assert plain.target_forwards == 20 and plain.tokens_per_forward == 1.0 and plain.discarded_per_token == 0
    _, spec = run(generate(target, PROMPT, GREEDY, 20, frozenset(), ModelDrafter(target, FixedLength(4), 8)))
    assert isinstance(spec, DecodeStats)
    assert spec.accepted == spec.drafted and spec.target_forwards == 5  # 1 + 4 steps of 5 tokens, minus the cap
