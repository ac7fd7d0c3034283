"""A request's spending limit (``max_cost_usd``), checked before each of its calls is made.

A call holds its worst case (its prompt's estimated tokens plus ``max_tokens`` per sample, at its backend's
prices) while it runs and settles at what it cost; a call whose worst case does not fit next to what was spent
and what calls in flight hold is not made.
"""

from __future__ import annotations

import math
from contextvars import ContextVar

from moa.errors import BudgetExceededError

#: a small slack so that a budget equal to a sum of prices is not refused for float rounding
_SLACK = 1e-12


class RequestBudget:
    """What one request may spend, has spent and holds for calls in flight, in USD."""

    def __init__(self, limit_usd: float) -> None:
        self.limit_usd = limit_usd
        self.spent_usd = 0.0
        self.held_usd = 0.0

    def hold(self, needed_usd: float, call: str) -> None:
        """Hold ``needed_usd`` for a call about to be made; raises ``BudgetExceededError`` when it does not fit."""
        committed = self.spent_usd + self.held_usd
        if committed + needed_usd > self.limit_usd * (1 + _SLACK) + _SLACK:
            raise BudgetExceededError(self.limit_usd, committed, needed_usd, call)
        self.held_usd += needed_usd

    def settle(self, held_usd: float, cost_usd: float) -> None:
        """A call that held ``held_usd`` ended having cost ``cost_usd``."""
        self.held_usd = max(self.held_usd - held_usd, 0.0)
        self.spent_usd += cost_usd


#: the budget of the request running in this context; ``None``: no limit
request_budget: ContextVar[RequestBudget | None] = ContextVar("moa_request_budget", default=None)


def prompt_tokens_bound(prompt_chars: int, messages: int) -> int:
    """A pre-call estimate of a prompt's tokens: 4 characters a token plus a few a message for the chat
    template (the same rate the tokens-per-minute limiter charges)."""
    return math.ceil(prompt_chars / 4) + 8 * messages
