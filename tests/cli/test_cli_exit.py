"""`moa run`'s quick exit after a local engine: what it must keep doing (flush output, run exit handlers)."""

from __future__ import annotations

import subprocess
import sys

SCRIPT = (
    "import atexit, sys\n"
    "from moa.cli import exit_now\n"
    "atexit.register(lambda: print('exit handler ran'))\n"
    "sys.stdout.write('the answer, not yet flushed')\n"
    "exit_now(3)\n"
    "print('never reached')\n"
)


def test_exit_now_flushes_the_answer_runs_exit_handlers_and_keeps_the_code() -> None:
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=60)
    assert done.returncode == 3, done.stderr
    assert done.stdout == "the answer, not yet flushedexit handler ran\n"
