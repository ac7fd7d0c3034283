"""The one registry: which class implements each backend, aggregator and defense ``type`` of a config.

Entries are import paths, resolved on first use, so a config that never names ``vllm`` never imports vLLM.
Third-party code may add its own with ``register``. ``shared`` keeps the one instance of a heavy helper (an
embedding model) that every ensemble in the process uses.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Hashable
from typing import Any, Literal, TypeVar

from moa.errors import ConfigError

Kind = Literal["backend", "aggregator", "defense"]
T = TypeVar("T")

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
    "defense": {
        "cluster-filter": "defenses.cluster_filter:ClusterFilter",
        "in-context-cluster": "defenses.in_context:InContextCluster",
        "dropout-vote": "defenses.dropout_vote:DropoutVote",
        "dropout-cluster": "defenses.dropout_cluster:DropoutCluster",
    },
}

# Heavy helpers every ensemble of a process may share (an embedding model), by key; made on first use.
_SHARED: dict[Hashable, Any] = {}


def register(kind: Kind, type_name: str, target: str | Any) -> None:
    """Register a class (or ``"module:attr"`` path) as the implementation of ``type_name``."""
    _ENTRIES[kind][type_name] = target


def shared(key: Hashable, make: Callable[[], T]) -> T:
    """The process's one instance for ``key``, made by ``make`` the first time it is asked for."""
    if key not in _SHARED:
        _SHARED[key] = make()
    instance: T = _SHARED[key]  # made by a ``make`` of this key
    return instance


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
