"""SpecDec++'s acceptance head: from the draft's last hidden state, the chance the target keeps the token
drafted from it.

A few residual SiLU blocks (h + SiLU(W h), W starting at zero so the head starts as a linear probe) and a
linear layer to two logits (reject, accept). Saved as safetensors with the hashes of the target and the
draft it was trained for and the stopping threshold h; loading checks both hashes.
"""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from moa.errors import ConfigError
from proposers.specdec.identity import read_metadata

KIND = "moa-acceptance-head"


class ResidualSiLU(nn.Module):
    def __init__(self, hidden: int):
        super().__init__()
        self.linear = nn.Linear(hidden, hidden)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, h: Tensor) -> Tensor:
        return h + nn.functional.silu(self.linear(h))


class AcceptanceHead(nn.Module):
    def __init__(self, hidden: int, blocks: int = 3):
        super().__init__()
        self.blocks = nn.Sequential(*(ResidualSiLU(hidden) for _ in range(blocks)))
        self.out = nn.Linear(hidden, 2)

    def forward(self, h: Tensor) -> Tensor:
        """h: [..., H] -> logits [..., 2] (reject, accept)."""
        logits: Tensor = self.out(self.blocks(h))
        return logits


def save(
    path: str | Path,
    head: AcceptanceHead,
    *,
    target_hash: str,
    draft_hash: str,
    threshold: float,
    report: dict[str, float],
) -> None:
    tensors = {k: v.detach().float().contiguous().cpu() for k, v in head.state_dict().items()}
    meta = {
        "kind": KIND,
        "target_hash": target_hash,
        "draft_hash": draft_hash,
        "threshold": repr(threshold),
        "hidden": str(head.out.in_features),
        "blocks": str(len(head.blocks)),
        "report": json.dumps(report),
    }
    save_file(tensors, str(path), metadata=meta)


def load(
    path: str | Path, *, target_hash: str, draft_hash: str, field: str | None = None
) -> tuple[AcceptanceHead, float]:
    """(head, its threshold h) from a file saved by ``save``; refuses a head made for other models."""
    meta = read_metadata(path, KIND, field)
    for role, want in (("target", target_hash), ("draft", draft_hash)):
        got = meta.get(f"{role}_hash", "")
        if got != want:
            raise ConfigError(
                f"{path} was trained for another {role} ({got[:16]}); this backend's {role} is {want[:16]}", field
            )
    head = AcceptanceHead(int(meta["hidden"]), int(meta["blocks"]))
    head.load_state_dict(load_file(str(path)))
    return head.eval().requires_grad_(False), float(meta["threshold"])


__all__ = ["AcceptanceHead", "KIND", "load", "save"]
