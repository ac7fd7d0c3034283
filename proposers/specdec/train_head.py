"""``moa specdec train-head``: train SpecDec++'s acceptance head for one target and one draft.

Data, as the paper builds it: the target samples responses; at every response position the draft samples
a token from its own distribution; each position then keeps the target's token with probability
``mix_rate`` (0.15) and the draft's token otherwise, so the head sees prefixes that, as in real drafting,
contain draft tokens. Both models read the mixed sequence; every draft-token position gives one example:
the draft's last hidden state before it, and the soft label min(1, p(y) / q(y)), the chance the target
keeps that token. The loss is a soft-label cross-entropy in which rejection counts ``reject_weight`` (6)
times as much as acceptance: stopping one token late costs a whole wasted verification.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
from torch import Tensor

from proposers.specdec.data import Sample
from proposers.specdec.head import AcceptanceHead
from proposers.specdec.sampling import Sampler, expand_vocab, make_generator

if TYPE_CHECKING:
    from proposers.specdec.causal_lm import CausalLM


@dataclass(frozen=True, slots=True)
class HeadTraining:
    mix_rate: float = 0.15
    reject_weight: float = 6.0
    threshold: float = 0.7  # h, stored with the head as its default
    blocks: int = 3
    temperature: float = 1.0  # the drafting temperature the labels are computed at
    epochs: int = 40
    patience: int = 5
    lr: float = 3e-4
    holdout: float = 0.2
    seed: int = 0


@torch.no_grad()
def examples(
    target: CausalLM, draft: CausalLM, vocab: Tensor | None, samples: list[Sample], cfg: HeadTraining
) -> tuple[Tensor, Tensor]:
    """(draft hidden states [N, H], soft acceptance labels [N]) from the target's responses."""
    sampler = Sampler(cfg.temperature, 1.0, make_generator(cfg.seed, target.device))
    size = target.get_output_embeddings().out_features
    feats, labels = [], []
    for s in samples:
        ids = torch.tensor([s.tokens], device=target.device)  # [1, S]
        span = slice(s.start - 1, -1)  # positions predicting the response tokens
        q = expand_vocab(sampler.probs(draft(input_ids=ids).logits[0, span]), vocab, size)  # [R, V]
        drafted = sampler.draw(q)  # [R]
        own = ids[0, s.start :]  # [R]
        keep_target = sampler.uniform(len(own)).to(own.device) < cfg.mix_rate  # [R]
        mixed = torch.cat([ids[0, : s.start], torch.where(keep_target, own, drafted)])[None]  # [1, S]
        p = sampler.probs(target(input_ids=mixed).logits[0, span].float())  # [R, V]
        out = draft(input_ids=mixed, output_hidden_states=True)
        q = expand_vocab(sampler.probs(out.logits[0, span]), vocab, size)  # [R, V]
        rows = torch.arange(len(own), device=own.device)
        y = mixed[0, s.start :]
        accept = (p[rows, y] / q[rows, y].clamp_min(1e-20)).clamp(max=1.0)  # [R]
        pick = ~keep_target
        feats.append(out.hidden_states[-1][0, span][pick].float())
        labels.append(accept[pick])
    return torch.cat(feats), torch.cat(labels)


def weighted_loss(logits: Tensor, labels: Tensor, reject_weight: float) -> Tensor:
    """logits: [N, 2] (reject, accept), labels: [N] soft acceptance -> mean weighted cross-entropy."""
    logp = torch.log_softmax(logits.float(), -1)
    return -(reject_weight * (1 - labels) * logp[:, 0] + labels * logp[:, 1]).mean()


def expected_calibration_error(pred: Tensor, labels: Tensor, bins: int = 10) -> float:
    """Mean |predicted - observed| acceptance over equal-width bins of the prediction, weighted by bin size."""
    which = (pred * bins).long().clamp(max=bins - 1)
    return sum(
        float((which == b).sum()) / len(pred) * abs(float(pred[which == b].mean() - labels[which == b].mean()))
        for b in range(bins)
        if (which == b).any()
    )


def constant_loss(fit: Tensor, test: Tensor, cfg: HeadTraining) -> float:
    """The held-out loss of the best constant prediction (from the training labels): the bar a head must pass."""
    a = float(fit.mean())
    p = min(max(a / (a + cfg.reject_weight * (1 - a)), 1e-6), 1 - 1e-6)
    logits = torch.tensor([1 - p, p]).log().expand(len(test), 2)
    return float(weighted_loss(logits, test, cfg.reject_weight))


@torch.no_grad()
def calibration(head: AcceptanceHead, feats: Tensor, labels: Tensor, reject_weight: float) -> dict[str, float]:
    """Held-out loss, mean predicted vs mean true acceptance, and expected calibration errors.

    The weighted loss is minimised by P = a / (a + w (1 - a)), a deliberately pessimistic estimate of the
    acceptance a; ``ece`` compares a with w P / (1 - P + w P), that estimate undone, and ``ece_raw`` with P.
    """
    logits = head(feats)
    pred = torch.softmax(logits.float(), -1)[:, 1]
    undone = reject_weight * pred / (1 - pred + reject_weight * pred)
    return {
        "loss": float(weighted_loss(logits, labels, reject_weight)),
        "mean_predicted": float(pred.mean()),
        "mean_label": float(labels.mean()),
        "ece": expected_calibration_error(undone, labels),
        "ece_raw": expected_calibration_error(pred, labels),
        "examples": len(labels),
    }


def train(
    feats: Tensor, labels: Tensor, cfg: HeadTraining, progress: Callable[[str], None] = lambda msg: None
) -> tuple[AcceptanceHead, dict[str, float]]:
    """A head fitted on the examples but a held-out share, and its report on that share.

    A tenth of the training examples picks the epoch to keep (early stopping after ``patience`` epochs without
    a better validation loss): the head is small, the data few thousand examples, and it overfits fast.
    """
    torch.manual_seed(cfg.seed)
    order = torch.randperm(len(labels))
    held = max(1, int(len(order) * cfg.holdout))
    test, rest = order[:held], order[held:]
    val, fit = rest[: max(1, len(rest) // 10)], rest[max(1, len(rest) // 10) :]
    head = AcceptanceHead(feats.shape[-1], cfg.blocks)
    report = {f"before_{k}": v for k, v in calibration(head, feats[test], labels[test], cfg.reject_weight).items()}
    opt = torch.optim.AdamW(head.parameters(), lr=cfg.lr, weight_decay=1e-2)
    best, best_loss, best_epoch = copy.deepcopy(head.state_dict()), float("inf"), 0
    for epoch in range(1, cfg.epochs + 1):
        for rows in fit[torch.randperm(len(fit))].split(256):
            loss = weighted_loss(head(feats[rows]), labels[rows], cfg.reject_weight)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        with torch.no_grad():
            val_loss = float(weighted_loss(head(feats[val]), labels[val], cfg.reject_weight))
        if val_loss < best_loss:
            best, best_loss, best_epoch = copy.deepcopy(head.state_dict()), val_loss, epoch
        elif epoch - best_epoch >= cfg.patience:
            break
    head.load_state_dict(best)
    progress(f"kept epoch {best_epoch} (validation loss {best_loss:.4f})")
    report.update({f"after_{k}": v for k, v in calibration(head, feats[test], labels[test], cfg.reject_weight).items()})
    report.update(
        epochs_kept=best_epoch, train_examples=len(fit), constant_loss=constant_loss(labels[fit], labels[test], cfg)
    )
    return head.eval(), report


__all__ = ["HeadTraining", "calibration", "expected_calibration_error", "examples", "train", "weighted_loss"]
