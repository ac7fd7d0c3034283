"""The final answer's log-probabilities in OpenAI's shape (``choices[i].logprobs``).

A backend answers ``SamplingParams.logprobs = k`` with the sampled token and its logprob per position
(``Generation.sampled``) and the most likely tokens there (``Generation.logprobs``). OpenAI's ``content`` lists,
per position, ``token``, ``logprob``, ``bytes`` (the token's UTF-8 bytes) and ``top_logprobs`` (the ``k`` most
likely, each with the same three fields). moa may cut an answer short (at a fence the aggregator starts to write):
then only the positions that begin inside the text the client gets are kept (counted in characters of the tokens'
text, which for a token that splits a character is approximate); an answer moa did not cut keeps every position.
A stream sends each position with the piece of text it begins in (``StreamedPositions``), cut the same way.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from typing import Any

from moa.errors import ConfigError
from moa.types import Generation, TopLogprobs


def requested(logprobs: bool | None, top_logprobs: int | None) -> int | None:
    """``SamplingParams.logprobs`` for a caller's ``logprobs`` and ``top_logprobs`` (0 by default): ``None`` when it
    asks for none; ``top_logprobs`` without ``logprobs`` is a ``ConfigError`` naming it, as OpenAI refuses it."""
    if not logprobs:
        if top_logprobs:
            raise ConfigError("only allowed when logprobs is true", "top_logprobs")
        return None
    return top_logprobs or 0


def _token(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}


Positions = tuple[tuple[tuple[str, float], ...], tuple[TopLogprobs, ...]]


def kept_positions(answer: Generation) -> Positions:
    """The sampled tokens of ``answer`` and their alternatives, cut to the positions that begin inside its text
    (all of them when moa did not cut it)."""
    tokens = answer.sampled or ()
    if "".join(t for t, _ in tokens) != answer.text:  # moa cut the text: the positions that begin inside it
        kept, written = [], 0
        for token, logprob in tokens:
            if written >= len(answer.text):
                break
            kept.append((token, logprob))
            written += len(token)
        tokens = tuple(kept)
    return tokens, (answer.logprobs or ())[: len(tokens)]


def openai_content(
    sampled: tuple[tuple[str, float], ...], alternatives: tuple[TopLogprobs, ...], top: int
) -> dict[str, Any]:
    """Positions as OpenAI's ``{"content": [...], "refusal": None}`` with ``top`` alternatives a position (whole
    answers and stream chunks alike)."""
    content = []
    for i, (token, logprob) in enumerate(sampled):
        ranked = alternatives[i] if i < len(alternatives) else ()
        content.append({**_token(token, logprob), "top_logprobs": [_token(t, lp) for t, lp in ranked[:top]]})
    return {"content": content, "refusal": None}


def openai_logprobs(answer: Generation, top: int) -> dict[str, Any] | None:
    """``answer``'s logprobs as OpenAI's ``{"content": [...], "refusal": None}`` with ``top`` alternatives a
    position; ``None`` when the backend sent none."""
    if answer.sampled is None:
        return None
    return openai_content(*kept_positions(answer), top)


@dataclass
class StreamedPositions:
    """A stream's positions held until the text each begins in is given out. A position is placed in the text of
    the piece it came with (at its tokens' offset there, clipped to the piece: a token that splits a character
    decodes longer than its share of the text), so the positions of text given out go with it whatever moa holds
    back or cuts. At the end, an uncut stream whose tokens spell its text keeps every position (an end-of-text
    token's too); otherwise only those that begin inside the text given out, as ``kept_positions`` keeps them."""

    pending: deque[tuple[int, str, float, TopLogprobs]] = field(default_factory=deque)
    received: int = 0  # characters of text received
    spelled: int = 0  # characters of token text received
    released: int = 0  # characters of text given out

    def add(self, text: str, sampled: tuple[tuple[str, float], ...], alternatives: tuple[TopLogprobs, ...]) -> None:
        """The positions that came with ``text``, one piece of the stream (call it for every piece, in order)."""
        offset = 0
        for i, (token, logprob) in enumerate(sampled):
            start = self.received + min(offset, max(len(text) - 1, 0)) if text else self.received
            self.pending.append((start, token, logprob, alternatives[i] if i < len(alternatives) else ()))
            offset += len(token)
            self.spelled += len(token)
        self.received += len(text)

    def given_out(self, chars: int, *, ended: bool = False) -> Positions:
        """The positions to send with ``chars`` more characters of text; ``ended``: the text has ended, and when
        nothing was cut (and the tokens spell the text) every position left goes."""
        self.released += chars
        whole = ended and self.released == self.received == self.spelled
        out = []
        while self.pending and (whole or self.pending[0][0] < self.released):
            out.append(self.pending.popleft())
        return tuple((t, lp) for _, t, lp, _ in out), tuple(top for _, _, _, top in out)


__all__ = ["StreamedPositions", "kept_positions", "openai_content", "openai_logprobs", "requested"]
