"""Candidate-length policies: how many tokens a draft model proposes before the target verifies.

A policy sees each drafted token as it is made (its draft probability and the draft's last hidden state)
and says when to stop; after verification it hears how many of the drafted tokens were kept.

- ``FixedLength``: always K.
- ``Heuristic``: K grows by 2 after a fully accepted draft and shrinks by 1 otherwise.
- ``Confidence``: stop once the product of the draft's own token probabilities falls below a threshold.
- ``AcceptanceStop`` (SpecDec++): an acceptance head estimates each token's chance of being kept; stop once
  the chance that some token of the draft is rejected, 1 - prod(P_accept), exceeds the threshold h.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import Tensor


class LengthPolicy(Protocol):
    def max_len(self) -> int:
        """The most tokens the next draft may have; called when it starts."""
        ...

    def stop(self, drafted: int, token_prob: float, hidden: Tensor) -> bool:
        """After the ``drafted``-th token of this draft (its draft probability, the draft's hidden state [H])."""
        ...

    def update(self, drafted: int, accepted: int) -> None: ...


@dataclass(slots=True)
class FixedLength:
    k: int

    def max_len(self) -> int:
        return self.k

    def stop(self, drafted: int, token_prob: float, hidden: Tensor) -> bool:
        return False

    def update(self, drafted: int, accepted: int) -> None:
        pass


@dataclass(slots=True)
class Heuristic:
    k: int
    max_k: int = 20

    def max_len(self) -> int:
        return self.k

    def stop(self, drafted: int, token_prob: float, hidden: Tensor) -> bool:
        return False

    def update(self, drafted: int, accepted: int) -> None:
        self.k = min(self.k + 2, self.max_k) if accepted == drafted else max(self.k - 1, 1)


class ProductStop:
    """Drafting stops once the running product of per-token estimates falls below ``floor``, within
    [min_k, max_k] tokens. Subclasses say what a token's estimate is."""

    def __init__(self, floor: float, min_k: int, max_k: int):
        self.floor, self.min_k, self.max_k = floor, min_k, max_k
        self._product = 1.0

    def estimate(self, token_prob: float, hidden: Tensor) -> float:
        raise NotImplementedError

    def max_len(self) -> int:
        self._product = 1.0
        return self.max_k

    def stop(self, drafted: int, token_prob: float, hidden: Tensor) -> bool:
        self._product *= self.estimate(token_prob, hidden)
        return drafted >= self.min_k and self._product < self.floor

    def update(self, drafted: int, accepted: int) -> None:
        pass


class Confidence(ProductStop):
    """Stop once the product of the draft's own probabilities of its tokens falls below ``threshold``."""

    def __init__(self, threshold: float, min_k: int = 2, max_k: int = 20):
        super().__init__(threshold, min_k, max_k)

    def estimate(self, token_prob: float, hidden: Tensor) -> float:
        return token_prob


class AcceptanceStop(ProductStop):
    """SpecDec++: stop once 1 - prod(P_accept) exceeds ``threshold`` (h), P_accept from the acceptance head."""

    def __init__(self, head: torch.nn.Module, threshold: float, min_k: int = 2, max_k: int = 20):
        super().__init__(1.0 - threshold, min_k, max_k)
        self.head = head  # hidden [..., H] -> logits [..., 2] (reject, accept)

    def estimate(self, token_prob: float, hidden: Tensor) -> float:
        return float(torch.softmax(self.head(hidden).float(), dim=-1)[..., 1])


__all__ = ["AcceptanceStop", "Confidence", "FixedLength", "Heuristic", "LengthPolicy", "ProductStop"]
