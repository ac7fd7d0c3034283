"""Dependencies go one way: import-linter's contracts (pyproject.toml) hold, and any part imported first in a
fresh interpreter loads without a lazy hook in ``moa/__init__.py`` to dodge a cycle."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def test_the_import_contracts_hold() -> None:
    pytest.importorskip("importlinter")
    lint = Path(sys.executable).with_name("lint-imports")
    run = subprocess.run([str(lint), "--no-cache"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stdout[-4000:]


@pytest.mark.parametrize(
    "module", ["aggregators.synthesize", "aggregators.sequential", "defenses.cluster_filter", "proposers.base"]
)
def test_a_part_imported_first_needs_no_lazy_hook(module: str) -> None:
    code = f"import {module}, moa; assert moa.Ensemble and moa.errors; assert not hasattr(moa, '__getattr__')"
    run = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-4000:]
