"""The AlpacaEval 2.0 files moa ships and reads: instruction sets, model outputs, per-instruction difficulty.

Shipped in ``moa/data`` (read with importlib.resources, so they work from a wheel too):
``instructions.json`` (the 805 instructions, in the order of every submission), ``reference_gpt4_turbo.json``
(gpt4_1106_preview's outputs, the 2.0 baseline) and ``instruction_difficulty.json`` (one number per instruction,
same order: the difficulty term of the length-controlled GLM).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from functools import cache
from importlib import resources
from pathlib import Path
from typing import Any, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from moa.config import config_error
from moa.errors import ConfigError

REFERENCE_NAME = "reference_gpt4_turbo.json"
#: backend settings that change how fast or how safely calls go, not what they answer: left out of fingerprints
OPERATIONAL_FIELDS = frozenset({"rate_limit", "retry", "timeout_s", "api_key_env", "headers"})


@dataclass(frozen=True, slots=True)
class Instruction:
    instruction: str
    dataset: str


@dataclass(frozen=True, slots=True)
class ModelOutput:
    """One row of a submission (``model_outputs.json``)."""

    instruction: str
    output: str
    generator: str
    dataset: str | None = None


class _RowIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    instruction: str = Field(min_length=1)


class _InstructionIn(_RowIn):
    dataset: str = "custom"


class _OutputIn(_RowIn):
    output: str
    generator: str = Field(min_length=1)
    dataset: str | None = None


RowT = TypeVar("RowT", bound=_RowIn)


def _read_json(path: str | Path | None, packaged: str) -> tuple[str, Any]:
    """(name for messages, parsed JSON) of a user's file, or of a file shipped in moa/data when ``path`` is None."""
    if path is None:
        return packaged, json.loads(resources.files("moa").joinpath("data", packaged).read_text(encoding="utf-8"))
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        return str(path), json.loads(text)
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON: {e}") from None


def _rows(name: str, data: Any, model: type[RowT]) -> list[RowT]:
    if not isinstance(data, list) or not data:
        raise ConfigError("must be a non-empty JSON list of objects", name)
    rows: list[RowT] = []
    for i, item in enumerate(data):
        try:
            rows.append(model.model_validate(item))
        except ValidationError as e:
            raise config_error(e, f"{name}[{i}]") from None
    seen: dict[str, int] = {}
    for i, row in enumerate(rows):
        if row.instruction in seen:
            raise ConfigError(f"repeats the instruction of row {seen[row.instruction]}", f"{name}[{i}].instruction")
        seen[row.instruction] = i
    return rows


def load_instructions(path: str | Path | None = None) -> list[Instruction]:
    """An instruction set: a JSON list of ``{instruction, dataset?}``; default: AlpacaEval 2.0's 805."""
    name, data = _read_json(path, "instructions.json")
    return [Instruction(r.instruction, r.dataset) for r in _rows(name, data, _InstructionIn)]


def load_outputs(path: str | Path | None = None) -> list[ModelOutput]:
    """Model outputs: a JSON list of ``{instruction, output, generator, dataset?}``; default: the 2.0 reference."""
    name, data = _read_json(path, REFERENCE_NAME)
    return [ModelOutput(r.instruction, r.output, r.generator, r.dataset) for r in _rows(name, data, _OutputIn)]


@cache
def instruction_difficulty() -> dict[str, float]:
    """The GLM's per-instruction difficulty, by instruction text (AlpacaEval 2.0's instructions only)."""
    values = json.loads(resources.files("moa").joinpath("data", "instruction_difficulty.json").read_text())
    return {i.instruction: float(v) for i, v in zip(load_instructions(), values, strict=True)}


def digest(values: Any) -> str:
    """A short stable fingerprint of JSON-able data."""
    blob = json.dumps(values, sort_keys=True, ensure_ascii=False, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


__all__ = [
    "OPERATIONAL_FIELDS",
    "Instruction",
    "ModelOutput",
    "digest",
    "instruction_difficulty",
    "load_instructions",
    "load_outputs",
]
