"""The shipped default end to end: Self-MoA on the embedded model in real vLLM, through the SDK and `moa run`.

Each test starts (and shuts down) its own engine, one after the other.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from moa import Ensemble
from tests.support.vllm_engine import engine_processes

pytestmark = pytest.mark.vllm

QUESTION = "Why is the sky blue?"


async def test_self_moa_through_the_sdk() -> None:
    async with Ensemble.from_config("default") as ensemble:
        result = await ensemble.acomplete(messages=[{"role": "user", "content": QUESTION}])
        streamed = [d async for d in ensemble.astream([{"role": "user", "content": QUESTION}], max_tokens=32)]
        assert engine_processes(), "no vLLM engine ran"

    assert result.text.strip()
    proposer_calls = [c for c in result.trace if c.role == "proposer"]
    assert [(c.n, c.outcome) for c in proposer_calls] == [(4, "ok")]  # four samples in one request
    assert result.trace[-1].role == "aggregator" and result.trace[-1].outcome == "ok"
    assert len(result.proposals) == 4 and all(p.text.strip() for p in result.proposals)
    assert result.usage.completion_tokens == sum(c.completion_tokens for c in result.trace)

    *pieces, last = streamed
    assert "".join(d.content for d in pieces).strip()
    assert last.finish_reason is not None and last.usage is not None
    assert engine_processes() == []  # closing the ensemble shut the engine down


def test_moa_run_answers_and_leaves_no_processes() -> None:
    moa = Path(sys.executable).parent / "moa"
    proc = subprocess.Popen([str(moa), "run", QUESTION], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    seen: dict[int, psutil.Process] = {}  # every vLLM process the command started
    deadline = time.monotonic() + 600
    while proc.poll() is None:
        assert time.monotonic() < deadline, "moa run did not finish"
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                if child.name().startswith("VLLM::"):
                    seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            pass
        time.sleep(0.5)
    out, err = proc.communicate()
    assert proc.returncode == 0, err[-3000:]
    assert out.strip()
    assert "moa: starting vLLM engine" in err  # long steps say what they do
    assert seen, "no vLLM process was seen"
    assert not [p for p in seen.values() if p.is_running() and p.status() != psutil.STATUS_ZOMBIE], "orphans left"
