"""The sampling fields every schema shares (config agents and aggregator, SDK overrides, the server's request),
declared once with their bounds, and the one way from a validated model to ``SamplingParams``.

Imports only pydantic and ``moa.types``, so every schema module may use it.
"""

from __future__ import annotations

import hashlib
from typing import Annotated, Any, Unpack

from pydantic import BaseModel, BeforeValidator, Field

from moa.types import SamplingOverrides, SamplingParams

#: seeds are int64 on the wire (OpenAI's API, vLLM): a request's seed must fit in it
INT64 = 2**63


def _one_stop(value: Any) -> Any:
    return [value] if isinstance(value, str) else value


Temperature = Annotated[float, Field(ge=0, le=2)]
TopP = Annotated[float, Field(gt=0, le=1)]
MaxTokens = Annotated[int, Field(gt=0)]
Seed = int
#: one stop sequence or a list of them; a string is a list of one
Stop = Annotated[list[str], BeforeValidator(_one_stop)]
#: a seed as OpenAI's API and vLLM take it
Int64Seed = Annotated[Seed, Field(ge=-INT64, lt=INT64)]

_FIELDS = ("temperature", "top_p", "max_tokens", "stop", "seed")


def sampling_params(model: BaseModel, **overrides: Unpack[SamplingOverrides]) -> SamplingParams:
    """The ``SamplingParams`` of a validated model's sampling fields (those it declares; an empty ``stop`` is
    none), with every override that is not ``None`` applied."""
    declared = type(model).model_fields
    values: dict[str, Any] = {name: getattr(model, name) for name in _FIELDS if name in declared}
    stop = values.get("stop")
    values["stop"] = tuple(stop) if stop else None
    return SamplingParams(**values).merged(**overrides)


def seed_offset(seed: int | None, index: int) -> int | None:
    """The seed of the ``index``-th of several samples or choices of one seeded request: ``seed + index``, kept in
    int64, so they differ and the request stays reproducible (index 0 keeps the seed as given)."""
    if seed is None or index == 0:
        return seed
    return (seed + index + INT64) % (2 * INT64) - INT64


def derived_seed(seed: int, where: str) -> int:
    """The seed of one call of a seeded request, named by ``where`` (its layer and agent): a hash of both, so
    every agent samples differently and the request stays repeatable. Below 2**62, leaving room for the
    ``+ index`` a backend adds per sample."""
    digest = hashlib.sha256(f"{seed}/{where}".encode()).digest()
    return int.from_bytes(digest[:8], "big") % 2**62
