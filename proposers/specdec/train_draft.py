"""``moa specdec train-draft``: distil a self-draft's block on the target's own outputs.

1. The target samples responses to the prompts.
2. One target forward per sequence records the hidden state after its first k layers (the block's input)
   and its final hidden state (whose logits are the teacher).
3. The block (then the target's norm and head, frozen) learns to match the target's next-token distribution
   on the response positions: cross-entropy against the target's probabilities, over the draft's vocabulary.
4. Held-out sequences measure how often the draft's argmax equals the target's and the expected acceptance
   of sampled drafting, sum_v min(p(v), q(v)).
"""

from __future__ import annotations

import random
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor, nn

from proposers.specdec.data import Sample
from proposers.specdec.sampling import expand_vocab
from proposers.specdec.self_draft import SelfDraftSpec, new_blocks

if TYPE_CHECKING:
    from proposers.specdec.causal_lm import CausalLM


@dataclass(frozen=True, slots=True)
class DraftTraining:
    spec: SelfDraftSpec
    draft_vocab: int = 8192  # rows of the draft's head (0: the whole vocabulary)
    epochs: int = 3
    lr: float = 3e-4
    holdout: float = 0.1
    seed: int = 0


@dataclass(slots=True)
class Features:
    inputs: Tensor  # [S, H]: hidden state after the first k target layers
    teacher: Tensor  # [R, H]: the target's final hidden state at positions predicting the response
    start: int  # first position predicting a response token (response start - 1)


def choose_vocab(samples: list[Sample], size: int, stop: frozenset[int], vocab_size: int) -> Tensor | None:
    """The tokens the target's responses use most, topped up with the lowest ids (BPE's most common merges)."""
    if size <= 0 or size >= vocab_size:
        return None
    counts = Counter(t for s in samples for t in s.tokens[s.start :])
    chosen = list(dict.fromkeys([*stop, *(t for t, _ in counts.most_common())]))[:size]
    taken = set(chosen)
    chosen += [t for t in range(vocab_size) if t not in taken][: size - len(chosen)]
    return torch.tensor(sorted(chosen), dtype=torch.long)


def split_by_prompt(samples: list[Sample], holdout: float, rng: random.Random) -> tuple[list[Sample], int]:
    """The samples shuffled by prompt, and how many lead: the held-out share, whole prompts only (several
    responses to one prompt all go to one side, so the held-out figures are on unseen prompts)."""
    groups: dict[tuple[int, ...], list[Sample]] = {}
    for s in samples:
        groups.setdefault(tuple(s.tokens[: s.start]), []).append(s)
    order = list(groups.values())
    rng.shuffle(order)
    out = [s for group in order for s in group]
    want, held = max(1, int(len(samples) * holdout)), 0
    for group in order:
        if held >= want:
            break
        held += len(group)
    return out, min(held, len(samples) - 1)


@torch.no_grad()
def features(target: CausalLM, samples: list[Sample], layers: int) -> list[Features]:
    out = []
    for s in samples:
        hidden = target(
            input_ids=torch.tensor([s.tokens], device=target.device), output_hidden_states=True, logits_to_keep=1
        ).hidden_states
        out.append(
            Features(hidden[layers][0].float().clone(), hidden[-1][0, s.start - 1 : -1].float().clone(), s.start - 1)
        )
    return out


class Student(nn.Module):
    """The block(s), then the target's norm and a head over the draft's vocabulary: teacher-forced."""

    head: Tensor  # [V', H], a buffer

    def __init__(self, target: CausalLM, blocks: nn.ModuleList, vocab: Tensor | None):
        super().__init__()
        self.blocks = blocks
        self.norm = target.model.norm
        self.rotary = target.model.rotary_emb
        weight = target.lm_head.weight.detach().float()
        self.register_buffer("head", weight if vocab is None else weight[vocab.to(weight.device)], persistent=False)

    def forward(self, inputs: Tensor) -> Tensor:
        """inputs: [S, H] -> draft logits [S, V']."""
        x = inputs[None]  # [1, S, H]
        positions = torch.arange(x.shape[1], device=x.device)[None]  # [1, S]
        rope = self.rotary(x, position_ids=positions)
        for block in self.blocks:
            x = block(x, attention_mask=None, position_ids=positions, position_embeddings=rope)
        logits: Tensor = self.norm(x)[0] @ self.head.T
        return logits


def teacher_probs(target: CausalLM, teacher: Tensor) -> Tensor:
    """teacher: [R, H] -> the target's probabilities [R, V] (over all tokens)."""
    return torch.softmax(teacher @ target.lm_head.weight.detach().float().T, dim=-1)


def response_logits(student: Student, f: Features) -> Tensor:
    """The draft's logits [R, V'] at the positions that predict the response."""
    logits: Tensor = student(f.inputs)
    return logits[f.start : f.start + len(f.teacher)]


def step_loss(student: Student, f: Features, logits: Tensor) -> Tensor:
    """The distillation loss of one sequence: cross-entropy against the target's distribution renormalised
    to the draft's vocabulary, i.e. the softmax of the target's logits on those rows (only they are computed)."""
    with torch.no_grad():
        p_sub = torch.softmax(f.teacher @ student.head.T, dim=-1)  # [R, V']
    return -(p_sub * torch.log_softmax(logits, -1)).sum(-1).mean()


@torch.no_grad()
def evaluate(student: Student, target: CausalLM, feats: list[Features], vocab: Tensor | None) -> dict[str, float]:
    agree = accept = loss = 0.0
    n = 0
    for f in feats:
        logits = response_logits(student, f)  # [R, V']
        step = step_loss(student, f, logits)
        p = teacher_probs(target, f.teacher)  # [R, V]
        q = expand_vocab(torch.softmax(logits, -1), vocab, p.shape[-1])  # [R, V]
        agree += float((q.argmax(-1) == p.argmax(-1)).sum())
        accept += float(torch.minimum(p, q).sum())
        loss += float(step) * len(p)
        n += len(p)
    return {"greedy_agreement": agree / n, "sampled_acceptance": accept / n, "loss": loss / n, "positions": n}


def train(
    target: CausalLM,
    samples: list[Sample],
    stop: frozenset[int],
    cfg: DraftTraining,
    progress: Callable[[str], None] = lambda msg: None,
) -> tuple[nn.ModuleList, Tensor | None, dict[str, float]]:
    """The trained blocks, the draft's token ids, and a report (held-out before and after training)."""
    rng = random.Random(cfg.seed)
    torch.manual_seed(cfg.seed)
    samples, held = split_by_prompt(samples, cfg.holdout, rng)
    vocab = choose_vocab(samples[held:], cfg.draft_vocab, stop, target.lm_head.out_features)
    started = time.perf_counter()
    feats = features(target, samples, cfg.spec.layers)
    progress(f"target features of {len(samples)} sequences: {time.perf_counter() - started:.0f} s")
    test, fit = feats[:held], feats[held:]
    blocks = new_blocks(target, cfg.spec).to(target.device)
    student = Student(target, blocks, vocab)
    report = {f"before_{k}": v for k, v in evaluate(student, target, test, vocab).items()}
    opt = torch.optim.AdamW(blocks.parameters(), lr=cfg.lr, weight_decay=0.0)
    total = cfg.epochs * len(fit)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=cfg.lr, total_steps=max(total, 1), pct_start=0.1)
    for epoch in range(cfg.epochs):
        rng.shuffle(fit)
        for f in fit:
            loss = step_loss(student, f, response_logits(student, f))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(blocks.parameters(), 1.0)
            opt.step()
            sched.step()
        result = evaluate(student, target, test, vocab)
        progress(
            f"epoch {epoch + 1}/{cfg.epochs}: held-out greedy agreement {result['greedy_agreement']:.3f}, "
            f"sampled acceptance {result['sampled_acceptance']:.3f}"
        )
    report.update({f"after_{k}": v for k, v in result.items()} if cfg.epochs else {})
    report.update(train_sequences=len(fit), heldout_sequences=len(test), train_s=time.perf_counter() - started)
    return blocks.requires_grad_(False), vocab, report


__all__ = ["DraftTraining", "choose_vocab", "split_by_prompt", "train"]
