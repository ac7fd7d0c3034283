"""``moa run``'s progress on stderr (plain lines off a terminal, live lines on a real pty) and ``--trace``'s
timeline, with ``moa run`` as a real subprocess against the scripted server."""

from __future__ import annotations

import os
import pty
import re
import subprocess
import sys

import pytest
import yaml

from tests.support.ensembles import moa_config
from tests.support.scripted_server import ScriptedServer

MOA = [sys.executable, "-m", "moa.cli"]


@pytest.fixture
def config_file(tmp_path, upstream_sync_url: str, upstream_thread: ScriptedServer):
    upstream_thread.script("p2", latency_s=0.3)
    path = tmp_path / "moa.yaml"
    path.write_text(yaml.safe_dump(moa_config(upstream_sync_url, [["p1", "p2"], ["p3"]])))
    return path


def _moa(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*MOA, *args], capture_output=True, text=True, timeout=60)


def test_without_a_tty_progress_is_plain_lines_on_stderr(config_file) -> None:
    done = _moa("run", "-c", str(config_file), "hello")
    assert done.returncode == 0, done.stderr
    assert done.stdout == "agg answer 0\n"  # stdout is the answer alone
    lines = done.stderr.splitlines()
    assert "\x1b" not in done.stderr
    assert re.fullmatch(r"\[ *\d+\.\d\d s\] layer 1 proposer p1 \(p1\): running", lines[0])
    assert any(line.endswith("layer 1 proposer p2 (p2): done, 3 tokens") for line in lines)
    assert any(line.endswith("layer 1 done, 6 tokens") for line in lines)
    assert lines[-1].endswith("layer 3 aggregator aggregator (agg): done, 3 tokens")
    p2_done = next(line for line in lines if "p2 (p2): done" in line)
    assert float(p2_done[1:].split(" s]")[0]) >= 0.3


def test_no_progress_keeps_stderr_quiet(config_file) -> None:
    done = _moa("run", "-c", str(config_file), "--no-progress", "--stream", "hello")
    assert done.returncode == 0 and done.stdout == "agg answer 0\n" and done.stderr == ""


def test_on_a_terminal_progress_is_one_live_line_a_call(config_file) -> None:
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [*MOA, "run", "-c", str(config_file), "--stream", "hello"], stdout=subprocess.PIPE, stderr=secondary,
        env={**os.environ, "COLUMNS": "120"},
    )  # fmt: skip
    os.close(secondary)
    seen = b""
    while True:
        try:
            piece = os.read(primary, 4096)
        except OSError:  # the process closed its end
            break
        if not piece:
            break
        seen += piece
    os.close(primary)
    assert proc.stdout is not None
    assert proc.stdout.read() == b"agg answer 0\n" and proc.wait(timeout=30) == 0
    shown = seen.decode()
    assert "\x1b[2K" in shown and "F\x1b[2K" in shown  # lines redrawn in place
    last = shown.rsplit("F", 1)[1]  # the final drawing: one line a call
    rows = [line.removeprefix("\x1b[2K") for line in last.splitlines()][-4:]
    assert [row.split()[:3] for row in rows] == [
        ["L1", "proposer", "p1"], ["L1", "proposer", "p2"], ["L2", "proposer", "p3"],
        ["L3", "aggregator", "aggregator"],
    ]  # fmt: skip
    assert all(re.search(r" done +3 tok +\d+\.\d s$", row) for row in rows)
    assert "running" in shown  # the calls were shown while they ran


def test_trace_ends_with_a_timeline_of_every_call(config_file) -> None:
    done = _moa("run", "-c", str(config_file), "--trace", "--no-progress", "hello")
    assert done.returncode == 0, done.stderr
    tail = done.stderr.splitlines()[-6:]
    assert tail[0].startswith("timeline: 4 calls over ")
    bars = [line.split("|")[1] for line in tail[2:]]
    names = [line.split()[:2] for line in tail[2:]]
    assert names == [["1", "p1"], ["1", "p2"], ["2", "p3"], ["3", "aggregator"]]
    assert all(line.split()[4] == "ok" for line in tail[2:])
    assert all(len(bar) == 40 and "#" in bar for bar in bars)
    p2_bar, p3_bar = bars[1], bars[2]
    assert p3_bar.index("#") >= p2_bar.rindex("#")  # layer 2 starts when the layer-1 straggler ends


def test_third_party_warnings_and_log_levels_stay_quiet_unless_verbose() -> None:
    code = (
        "import os, sys, warnings\n"
        "from moa.cli import quiet_third_party\n"
        "if sys.argv[1] == 'quiet': quiet_third_party()\n"
        "warnings.warn_explicit('torch noise', UserWarning, 'x.py', 1, module='torch.cuda')\n"
        "warnings.warn_explicit('moa warning', UserWarning, 'y.py', 1, module='moa.engine')\n"
        "print(os.environ.get('VLLM_LOGGING_LEVEL'))\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "VLLM_LOGGING_LEVEL"}
    quiet = subprocess.run([sys.executable, "-c", code, "quiet"], capture_output=True, text=True, env=env, timeout=60)
    loud = subprocess.run([sys.executable, "-c", code, "verbose"], capture_output=True, text=True, env=env, timeout=60)
    assert quiet.stdout == "ERROR\n" and "torch noise" not in quiet.stderr and "moa warning" in quiet.stderr
    assert loud.stdout == "None\n" and "torch noise" in loud.stderr


def test_what_child_processes_print_goes_to_the_log_not_the_terminal(tmp_path) -> None:
    """vLLM's engine processes, torch's C++ warnings and Triton write to file descriptor 2 directly: while moa
    runs quietly that descriptor is a log file, and moa's own lines still reach the real stderr."""
    log = tmp_path / "engines.log"
    code = (
        "import logging, subprocess, sys\n"
        "from pathlib import Path\n"
        "from moa.logs import configure_logging, native_output_to\n"
        "configure_logging()\n"
        f"with native_output_to(Path({str(log)!r})):\n"
        "    subprocess.run(['sh', '-c', 'echo engine-noise >&2'], check=True)\n"
        "    logging.getLogger('moa.test').info('starting engine')\n"
        "    print('progress line', file=sys.stderr)\n"
        "print('after the block', file=sys.stderr)\n"
        "subprocess.run(['sh', '-c', 'echo child-after >&2'], check=True)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "engine-noise" not in done.stderr and "engine-noise" in log.read_text()
    assert "moa: starting engine" in done.stderr and "progress line" in done.stderr
    assert "after the block" in done.stderr and "child-after" in done.stderr  # the terminal is back afterwards
