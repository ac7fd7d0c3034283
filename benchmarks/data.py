"""Where benchmarks find their data: one loader for every benchmark.

AlpacaEval's 805 instructions are the packaged copy (``moa/data/instructions.json``, read by
``moa.alpaca_eval.data``), so a fresh clone needs nothing else. Data too large to ship lives in a shared data
folder outside the repository: ``$MOA_SHARED_DATA``, else the first ``shared/data`` beside the repository or
one of its parent folders (``../shared/data`` for a clone, ``../../shared/data`` for a worktree under it).
``shared_path`` finds a file there and names the paths it tried when it is missing.
"""

from __future__ import annotations

import os
from pathlib import Path

from moa.alpaca_eval.data import load_instructions

REPO = Path(__file__).resolve().parents[1]


def alpaca_eval_instructions(limit: int | None = None) -> list[str]:
    """The first ``limit`` (default: all 805) AlpacaEval 2.0 instructions, in submission order."""
    return [row.instruction for row in load_instructions()][:limit]


def shared_data_candidates() -> list[Path]:
    """The shared data folders looked at, in order."""
    if env := os.environ.get("MOA_SHARED_DATA"):
        return [Path(env)]
    return [parent / "shared" / "data" for parent in REPO.parents]


def shared_path(*parts: str) -> Path:
    """``parts`` under the shared data folder; ``FileNotFoundError`` naming the paths tried when it is missing."""
    tried = [folder.joinpath(*parts) for folder in shared_data_candidates()]
    for path in tried:
        if path.exists():
            return path
    raise FileNotFoundError(f"benchmark data not found: tried {', '.join(map(str, tried))} (set MOA_SHARED_DATA)")
