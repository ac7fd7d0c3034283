"""The final answer's log-probabilities in OpenAI's shape (``choices[i].logprobs``).

A backend answers ``SamplingParams.logprobs = k`` with the sampled token and its logprob per position
(``Generation.sampled``) and the most likely tokens there (``Generation.logprobs``). OpenAI's ``content`` lists,
per position, ``token``, ``logprob``, ``bytes`` (the token's UTF-8 bytes) and ``top_logprobs`` (the ``k`` most
likely, each with the same three fields). moa may cut an answer short (at a fence the aggregator starts to write):
then only the positions that begin inside the text the client gets are kept (counted in characters of the tokens'
text, which for a token that splits a character is approximate); an answer moa did not cut keeps every position.
"""

from __future__ import annotations

from typing import Any

from moa.errors import ConfigError
from moa.types import Generation


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


def openai_logprobs(answer: Generation, top: int) -> dict[str, Any] | None:
    """``answer``'s logprobs as OpenAI's ``{"content": [...], "refusal": None}`` with ``top`` alternatives a
    position; ``None`` when the backend sent none."""
    if answer.sampled is None:
        return None
    alternatives = answer.logprobs or ()
    tokens = answer.sampled
    if "".join(t for t, _ in tokens) != answer.text:  # moa cut the text: the positions that begin inside it
        kept, written = [], 0
        for token, logprob in tokens:
            if written >= len(answer.text):
                break
            kept.append((token, logprob))
            written += len(token)
        tokens = tuple(kept)
    content = []
    for i, (token, logprob) in enumerate(tokens):
        ranked = alternatives[i] if i < len(alternatives) else ()
        content.append({**_token(token, logprob), "top_logprobs": [_token(t, lp) for t, lp in ranked[:top]]})
    return {"content": content, "refusal": None}


__all__ = ["openai_logprobs", "requested"]
