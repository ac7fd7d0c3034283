"""moa: inference-time ensembles (Mixture-of-Agents, Self-MoA) over local and remote LLMs.

from moa import Ensemble
async with Ensemble.from_config("self-moa") as ens:
    result = await ens.acomplete(messages=[{"role": "user", "content": "Why is the sky blue?"}])
    print(result.choices[0].message.content)
"""

from __future__ import annotations

from moa import errors
from moa.config import load_config
from moa.ensemble import Ensemble
from moa.types import Completion, Delta, Message

__version__ = "0.1.0"
__all__ = ["Ensemble", "load_config", "Completion", "Delta", "Message", "errors"]
