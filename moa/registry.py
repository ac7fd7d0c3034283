"""The one registry: which class implements each backend, aggregator and defense ``type`` of a config.

The type names are the config schema's own (each config class's ``type`` Literal); the table here adds only
where each implementation lives. Entries are import paths, resolved on first use, so a config that never names
``vllm`` never imports vLLM. ``shared`` keeps the one instance of a heavy helper (an embedding model) that every
ensemble in the process uses.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Hashable
from typing import Any, Literal, TypeVar

from pydantic import BaseModel

from moa.config import aggregator, backends
from moa.defense_config import (
    DEFENSE_TYPES,
    ClusterFilterConfig,
    DropoutClusterConfig,
    DropoutVoteConfig,
    InContextClusterConfig,
    type_names,
)
from moa.errors import ConfigError

Kind = Literal["backend", "aggregator", "defense"]
T = TypeVar("T")

#: the implementation of each backend config class
_BACKENDS: dict[type[BaseModel], str] = {
    backends.OpenAIBackendConfig: "proposers.openai_http:OpenAIProposer",
    backends.VLLMBackendConfig: "proposers.vllm_engine:VLLMProposer",
    backends.TorchBackendConfig: "proposers.torch_local:TorchProposer",
}
#: the implementation of each defense config class
_DEFENSES: dict[type[BaseModel], str] = {
    ClusterFilterConfig: "defenses.cluster_filter:ClusterFilter",
    InContextClusterConfig: "defenses.in_context:InContextCluster",
    DropoutVoteConfig: "defenses.dropout_vote:DropoutVote",
    DropoutClusterConfig: "defenses.dropout_cluster:DropoutCluster",
}
#: the implementation of each aggregator config class
_AGGREGATORS: dict[type[BaseModel], str] = {
    aggregator.SynthesizeConfig: "aggregators.synthesize:SynthesizeAggregator",
    aggregator.SelfMoASeqConfig: "aggregators.sequential:SequentialAggregator",
}


def _by_name(table: dict[type[BaseModel], str]) -> dict[str, str | Any]:
    return {name: path for config, path in table.items() for name in type_names(config)}


_ENTRIES: dict[Kind, dict[str, str | Any]] = {
    "backend": _by_name(_BACKENDS),
    "aggregator": _by_name(_AGGREGATORS),
    "defense": _by_name(_DEFENSES),
}


def _check_complete() -> None:
    """Every type the schema accepts has an implementation, nothing else has one, and every config class defines
    what its kind declares (a backend's ``endpoint`` and ``one_call_for_n``, an aggregator's ``calls``)."""
    for table in (_BACKENDS, _AGGREGATORS, _DEFENSES):
        for config in table:
            if inspect.isabstract(config):
                missing = ", ".join(sorted(config.__abstractmethods__))
                raise RuntimeError(f"registry: {config.__name__} does not define {missing}")
    schema: dict[Kind, tuple[str, ...]] = {
        "backend": backends.BACKEND_TYPES,
        "aggregator": aggregator.AGGREGATOR_TYPES,
        "defense": DEFENSE_TYPES,
    }
    for kind, names in schema.items():
        if sorted(_ENTRIES[kind]) != sorted(names):
            raise RuntimeError(f"registry: {kind} types {sorted(_ENTRIES[kind])} differ from the schema's {names}")


_check_complete()

# Heavy helpers every ensemble of a process may share (an embedding model), by key; made on first use.
_SHARED: dict[Hashable, Any] = {}


def shared(key: Hashable, make: Callable[[], T]) -> T:
    """The process's one instance for ``key``, made by ``make`` the first time it is asked for."""
    if key not in _SHARED:
        _SHARED[key] = make()
    instance: T = _SHARED[key]  # made by a ``make`` of this key
    return instance


def resolve(kind: Kind, type_name: str) -> Any:
    """The class implementing ``type_name`` of ``kind``, imported on first use."""
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
