"""A process spawned while an engine starts does not run the caller's script again (a plain script needs no
``if __name__ == "__main__":`` guard), and a script that does run again in a spawned child is told why."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

SCRIPT = """\
import multiprocessing, sys, time
from proposers.main_module import importing_main_of_a_spawned_process, main_module_not_reimported

print("top level ran, in a spawned child's import:", importing_main_of_a_spawned_process(), flush=True)
ctx = multiprocessing.get_context("spawn")  # what vLLM uses for its engine core on CPU
with {hider}:
    child = ctx.Process(target=time.sleep, args=(0,))
    child.start()
    child.join()
print("child exit code", child.exitcode, flush=True)
"""


def _run(tmp_path: Path, hider: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "plain.py"
    script.write_text(SCRIPT.format(hider=hider))
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)  # fmt: skip


def test_a_spawned_child_does_not_run_a_guardless_script_again(tmp_path: Path) -> None:
    done = _run(tmp_path, "main_module_not_reimported()")
    assert done.returncode == 0, done.stderr
    assert done.stdout.count("top level ran") == 1 and "child exit code 0" in done.stdout


def test_without_it_the_child_runs_the_script_again_and_knows_it(tmp_path: Path) -> None:
    done = _run(tmp_path, "open(__file__)")  # any context manager: multiprocessing's own behaviour
    assert "top level ran, in a spawned child's import: True" in done.stdout  # what the engine start checks
    assert "bootstrapping phase" in done.stderr and "child exit code 1" in done.stdout
