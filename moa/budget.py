"""A request's spending limit (``max_cost_usd``), checked before each of its calls is made.

A call holds its worst case (its prompt's bound below plus ``max_tokens`` per sample, at its backend's prices)
while it runs and settles at what it cost: the upstream's usage, and for what the upstream did not report, the
same bound (``moa.backend``). A call whose worst case does not fit next to what was spent and what calls in
flight hold is not made. One budget covers every choice of a request (``n > 1``); it travels in the request's
``moa.context.RequestContext``.
"""

from __future__ import annotations

from collections.abc import Iterable

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


#: tokens a chat template may add around each message (a role header and an end marker: 4-5 in ChatML and
#: Llama 3) and once a call (a begin-of-text token and the assistant's header)
TEMPLATE_TOKENS_PER_MESSAGE = 8
TEMPLATE_TOKENS_PER_CALL = 8


def prompt_tokens_bound(prompt_bytes: int, messages: int) -> int:
    """At most how many tokens a prompt of ``prompt_bytes`` UTF-8 bytes in ``messages`` messages can be: a
    byte-level BPE token (GPT, Llama 3, Qwen) covers at least one byte and a SentencePiece byte fallback one
    byte a token, so no tokenizer counts more tokens than bytes; plus the chat template's tokens. (Dense text
    such as CJK is up to one token a character, 3 bytes; English is about 4 characters a token.)"""
    return prompt_bytes + TEMPLATE_TOKENS_PER_MESSAGE * messages + TEMPLATE_TOKENS_PER_CALL


def utf8_bytes(texts: Iterable[str]) -> int:
    """The UTF-8 length of ``texts`` together (a lone surrogate counts 3 bytes, as the wire would carry it)."""
    return sum(len(t.encode("utf-8", "surrogatepass")) for t in texts)
