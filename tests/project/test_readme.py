"""The README's Python blocks marked runnable (```` ```python runnable ````) are complete scripts: they compile,
and (marked vllm: it starts the embedded model) each runs as written, as a plain file with no __main__ guard."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
_BLOCK = re.compile(r"^```python runnable\n(.*?)^```$", re.S | re.M)


def runnable_blocks() -> list[str]:
    return _BLOCK.findall((ROOT / "README.md").read_text(encoding="utf-8"))


def test_the_readme_has_runnable_blocks_and_they_compile() -> None:
    blocks = runnable_blocks()
    assert blocks, "README.md marks no ```python runnable block"
    for k, code in enumerate(blocks):
        compile(code, f"README.md runnable block {k}", "exec")  # a top-level `async with` would fail here
        assert "[...]" not in code and "..." not in code.replace('"""', ""), "a placeholder in a runnable block"


@pytest.mark.vllm
@pytest.mark.parametrize("k", range(len(runnable_blocks())))
def test_a_runnable_readme_block_runs_as_written(k: int, tmp_path: Path) -> None:
    script = tmp_path / "example.py"  # a plain script in a fresh folder, run the way the README says
    script.write_text(runnable_blocks()[k], encoding="utf-8")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    done = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip(), "the example printed nothing"
    assert "Traceback" not in done.stderr and "bootstrapping phase" not in done.stderr
