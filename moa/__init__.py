"""moa: inference-time ensembles (Mixture-of-Agents, Self-MoA) over local and remote LLMs.

from moa import Ensemble
async with Ensemble.from_config("self-moa") as ens:
    result = await ens.acomplete(messages=[{"role": "user", "content": "Why is the sky blue?"}])
    print(result.choices[0].message.content)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Ensemble", "load_config", "Completion", "Delta", "Message", "errors"]

if TYPE_CHECKING:
    from moa import errors
    from moa.config import load_config
    from moa.ensemble import Ensemble
    from moa.types import Completion, Delta, Message

_LAZY = {
    "Ensemble": "moa.ensemble",
    "load_config": "moa.config",
    "Completion": "moa.types",
    "Delta": "moa.types",
    "Message": "moa.types",
}


def __getattr__(name: str) -> Any:
    # Lazy, so that `import aggregators.x` (which imports moa.types) never drags in the engine and its cycle.
    if name == "errors":
        import moa.errors

        return moa.errors
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'moa' has no attribute {name!r}")
