"""From the sampling fields declared once (``moa.types.SamplingFields``) to every schema and every backend.

``sampling_params`` turns any validated model that inherits the fields (a config agent, the SDK's overrides, the
server's request) into ``SamplingParams``. ``FieldSupport`` is what a backend declares it honours: the fields of
the APIs it speaks (``OPENAI_FIELDS``, ``VLLM_FIELDS``, from each field's ``Wire``) or a list of its own; it
refuses a field it cannot honour by name (``UnsupportedFieldError``) and writes the rest in its wire format.
``RequestExtensions`` are moa's own per-request fields: the SDK takes them by name, the server as ``moa_<name>``.

Imports only pydantic, ``moa.types`` and ``moa.errors``, so every schema module may use it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, Field

from moa.errors import UnsupportedFieldError
from moa.types import (
    INT64,
    MAX_TOKENS,
    MaxTokens,
    SamplingFields,
    SamplingParams,
    Seed,
    Stop,
    Temperature,
    TopP,
    Wire,
)

Api = Literal["openai", "vllm"]


def fields_of(api: Api) -> frozenset[str]:
    """The declared sampling fields that ``api`` takes (each field's ``Wire``)."""
    found = []
    for name, info in SamplingFields.model_fields.items():
        wire = next((m for m in info.metadata if isinstance(m, Wire)), Wire())
        if getattr(wire, api):
            found.append(name)
    return frozenset(found)


#: the fields of OpenAI's chat completions API, which every OpenAI-compatible server takes
OPENAI_FIELDS = fields_of("openai")
#: the fields of vLLM's ``SamplingParams``: in-process vLLM, and a vLLM server's extensions to OpenAI's API
VLLM_FIELDS = fields_of("vllm")


def set_fields(model: BaseModel) -> dict[str, Any]:
    """The declared sampling fields that ``model`` sets (not ``None``), in declaration order."""
    declared = type(model).model_fields
    values = ((name, getattr(model, name)) for name in SamplingFields.model_fields if name in declared)
    return {name: value for name, value in values if value is not None}


def sampling_params(model: BaseModel, **overrides: Any) -> SamplingParams:
    """The ``SamplingParams`` of a validated model's sampling fields (those it declares; an empty ``stop`` is
    none), with every override that is not ``None`` applied."""
    values = set_fields(model)
    if not values.get("stop", True):
        del values["stop"]
    return SamplingParams(**values).merged(**overrides)


@dataclass(frozen=True, slots=True)
class FieldSupport:
    """The sampling fields one backend honours, and what to tell a caller who sets another."""

    fields: frozenset[str]
    hint: str = ""

    def refusal(self, field: str, backend: str) -> str | None:
        """Why ``backend`` refuses ``field``; ``None`` when it honours it."""
        if field in self.fields:
            return None
        honoured = ", ".join(sorted(self.fields))
        hint = f"; {self.hint}" if self.hint else ""
        return f"backend {backend!r} cannot honour this field (it honours {honoured}){hint}"

    def check(self, params: BaseModel, backend: str, at: str = "") -> None:
        """Refuse the first field ``params`` sets that ``backend`` cannot honour; ``at`` prefixes its path."""
        for field in set_fields(params):
            reason = self.refusal(field, backend)
            if reason is not None:
                path = f"{at}.{field}" if at else field
                raise UnsupportedFieldError(reason, path, field=field, backend=backend)

    def wire(self, params: BaseModel, backend: str) -> dict[str, Any]:
        """The fields ``params`` sets, by name with JSON values (``stop`` a list), each one honoured: the body
        entries of an OpenAI-compatible request, the arguments of vLLM's ``SamplingParams``."""
        self.check(params, backend)
        return {k: _json(v) for k, v in set_fields(params).items() if v != ()}


def _json(value: Any) -> Any:
    """A field's value as JSON: ``stop`` a list, ``response_format`` OpenAI's object."""
    if isinstance(value, tuple):
        return list(value)
    wire = getattr(value, "wire", None)
    return wire() if callable(wire) else value


def _extension_alias(name: str) -> str:
    return f"moa_{name}"


class RequestExtensions(BaseModel):
    """moa's own fields of one request, declared once: the SDK takes them by name (``deadline_s=``), the server's
    request body as ``moa_<name>`` (``moa_deadline_s``); ``ChatRequest`` has a field of each name."""

    deadline_s: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="this request's deadline: may shorten the config's, never lengthen it"
    )
    max_cost_usd: Annotated[float, Field(gt=0, allow_inf_nan=False)] | None = Field(
        default=None, description="this request's budget in USD: may lower the config's, never raise it"
    )


def server_alias(name: str) -> str:
    """The name of a request field in the server's body: ``moa_<name>`` for moa's extensions, else its own."""
    return _extension_alias(name) if name in RequestExtensions.model_fields else name


def extensions(model: BaseModel) -> dict[str, Any]:
    """The ``RequestExtensions`` a validated model carries, as ``ChatRequest``'s keyword arguments."""
    return {name: getattr(model, name) for name in RequestExtensions.model_fields}


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


__all__ = [
    "INT64",
    "MAX_TOKENS",
    "OPENAI_FIELDS",
    "VLLM_FIELDS",
    "FieldSupport",
    "MaxTokens",
    "RequestExtensions",
    "SamplingFields",
    "Seed",
    "Stop",
    "Temperature",
    "TopP",
    "derived_seed",
    "extensions",
    "fields_of",
    "sampling_params",
    "seed_offset",
    "server_alias",
    "set_fields",
]
