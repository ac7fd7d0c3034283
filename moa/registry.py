"""The one registry: which class implements each backend, aggregator and defense ``type`` of a config.

Entries are import paths, resolved on first use, so a config that never names ``vllm`` never imports vLLM.
Third-party code may add its own with ``register``.
"""

from __future__ import annotations

import importlib
from typing import Any, Literal

from moa.errors import ConfigError

Kind = Literal["backend", "aggregator", "defense"]

_ENTRIES: dict[Kind, dict[str, str | Any]] = {
    "backend": {
        "openai": "proposers.openai_http:OpenAIProposer",
        "vllm": "proposers.vllm_engine:VLLMProposer",
        "torch": "proposers.torch_local:TorchProposer",
    },
    "aggregator": {
        "synthesize": "aggregators.synthesize:SynthesizeAggregator",
        "self-moa-seq": "aggregators.sequential:SequentialAggregator",
    },
    "defense": {},
}


def register(kind: Kind, type_name: str, target: str | Any) -> None:
    """Register a class (or ``"module:attr"`` path) as the implementation of ``type_name``."""
    _ENTRIES[kind][type_name] = target


def resolve(kind: Kind, type_name: str) -> Any:
    try:
        target = _ENTRIES[kind][type_name]
    except KeyError:
        known = ", ".join(sorted(_ENTRIES[kind]))
        raise ConfigError(f"unknown {kind} type {type_name!r} (known: {known})") from None
    if isinstance(target, str):
        module_name, _, attr = target.partition(":")
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise ConfigError(
                f"{kind} type {type_name!r} needs a package that is not installed: {e.name or e}"
            ) from None
        target = getattr(module, attr)
        _ENTRIES[kind][type_name] = target
    return target
