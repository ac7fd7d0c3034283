"""``moa alpaca-eval generate``: the submission format (read back with alpaca_eval's own loader), failures
listed and retried, refusal of another run's checkpoint, and resume after SIGKILL at random moments."""

from __future__ import annotations

import asyncio
import dataclasses
import fcntl
import io
import json
import os
import pty
import random
import re
import select
import signal
import struct
import subprocess
import sys
import termios
import time
from pathlib import Path

import pytest
import yaml

from moa.alpaca_eval.data import load_instructions
from moa.alpaca_eval.generate import GenerateOptions, checkpoint_path, generate
from moa.alpaca_eval.progress import Progress
from tests.support.ensembles import moa_config
from tests.support.scripted_server import ScriptedServer


def echo(model: str, messages: list[dict[str, str]], index: int) -> str:
    """Each model answers with its name and the instruction, so every output says which instruction it is for."""
    instruction = [m["content"] for m in messages if m["role"] == "user"][-1]  # references may follow it
    return f"[{model}] {instruction}"


def _moa(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "moa.cli", *args], capture_output=True, text=True, timeout=timeout)


def _write_instructions(path: Path, texts: list[str]) -> Path:
    path.write_text(json.dumps([{"instruction": t, "dataset": "test"} for t in texts]))
    return path


async def test_submission_is_read_by_alpaca_eval_own_loader(upstream: ScriptedServer, tmp_path) -> None:
    alpaca_utils = pytest.importorskip("alpaca_eval.utils")
    for model in ("p1", "p2", "agg"):
        upstream.script(model, answer=echo)
    out = tmp_path / "model_outputs.json"
    traces = tmp_path / "traces.jsonl"
    config = moa_config(upstream.base_url, [["p1", "p2"]])
    report = await generate(
        GenerateOptions(config, out, generator="my-moa", limit=12, concurrency=5, traces=traces), io.StringIO()
    )
    assert report.written and report.done == report.total == 12 and not report.failures
    instructions = load_instructions()[:12]
    df = alpaca_utils.load_or_convert_to_dataframe(str(out))  # what `alpaca_eval evaluate` calls on the file
    assert list(df.columns) == ["instruction", "output", "generator", "dataset"]
    assert alpaca_utils.get_generator_name(None, df) == "my-moa"
    assert df["instruction"].tolist() == [i.instruction for i in instructions]
    assert df["dataset"].tolist() == [i.dataset for i in instructions]
    assert df["output"].tolist() == [f"[agg] {i.instruction}" for i in instructions]
    lines = [json.loads(line) for line in traces.read_text().splitlines()]
    assert sorted(r["index"] for r in lines) == list(range(12))
    assert {len(r["trace"]) for r in lines} == {3} and {len(r["proposals"]) for r in lines} == {2}


async def test_failed_instructions_are_listed_then_retried(upstream: ScriptedServer, tmp_path) -> None:
    texts = ["alpha", "FAIL bravo", "charlie", "delta", "FAIL echo", "foxtrot"]
    instructions = _write_instructions(tmp_path / "set.json", texts)

    def flaky(model: str, messages: list[dict[str, str]], index: int) -> str:
        return "" if "FAIL" in messages[-1]["content"] else echo(model, messages, index)

    upstream.script("p1", answer=flaky)
    upstream.script("agg", answer=echo)
    config = moa_config(upstream.base_url, [["p1"]], backend={"retry": {"max_retries": 0}})
    out = tmp_path / "model_outputs.json"
    traces = tmp_path / "traces.jsonl"
    options = GenerateOptions(config, out, instructions=instructions, concurrency=3, traces=traces)

    first = await generate(options, io.StringIO())
    assert [f.index for f in first.failures] == [1, 4] and "empty answer" in first.failures[0].error
    failed = [r for r in map(json.loads, traces.read_text().splitlines()) if "error" in r]
    assert sorted(r["index"] for r in failed) == [1, 4] and all("empty answer" in r["error"] for r in failed)
    assert [c["agent"] for c in failed[0]["trace"]] == ["p1"]  # its call came back empty; no aggregator call
    assert not first.written and not out.exists() and first.done == 4

    partial = await generate(dataclasses.replace(options, allow_partial=True), io.StringIO())
    assert partial.written and partial.resumed == 4
    assert [r["instruction"] for r in json.loads(out.read_text())] == [t for t in texts if "FAIL" not in t]

    upstream.script("p1", answer=echo)  # the backend recovers
    calls_before = len(upstream.for_model("p1"))
    final = await generate(options, io.StringIO())
    assert not final.failures and final.written and final.resumed == 4
    assert len(upstream.for_model("p1")) - calls_before == 2  # only the failed two were asked again
    assert [r["output"] for r in json.loads(out.read_text())] == [f"[agg] {t}" for t in texts]


def test_progress_shows_a_bar_on_a_terminal_and_plain_lines_elsewhere() -> None:
    tty, plain = io.StringIO(), io.StringIO()
    for stream, is_tty in ((tty, True), (plain, False)):
        progress = Progress("generate", 10, stream, done=4, tty=is_tty)
        progress.advance(done=2, failed=1, tokens=12_345)
        progress.show()
        progress.show(final=True)
    assert tty.getvalue().startswith("\r\x1b[2Kgenerate [##############") and tty.getvalue().count("\n") == 1
    assert "6/10 done | 1 failed" in tty.getvalue() and "12.3k tokens" in tty.getvalue()
    assert (
        plain.getvalue().splitlines()[0].startswith("generate: 6/10 done, 1 failed, ") and "\r" not in plain.getvalue()
    )


def test_progress_on_a_narrow_terminal_keeps_to_one_line() -> None:
    """A line wider than the terminal would wrap, and each redraw would then leave a line behind."""
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 40, 0, 0))  # 24 rows, 40 columns
    with os.fdopen(follower, "w") as terminal:
        progress = Progress("generate", 10, terminal, done=4)
        progress.advance(done=2, failed=1, tokens=12_345)
        progress.show()
        progress.show(final=True)
    written = b""
    while select.select([leader], [], [], 0.5)[0]:
        try:
            chunk = os.read(leader, 65536)
        except OSError:  # EIO: the terminal's other side is closed and everything was read
            break
        if not chunk:
            break
        written += chunk
    os.close(leader)
    redraws = [re.sub(r"\x1b\[[0-9;]*[A-Za-z]", "", r) for r in re.split(r"[\r\n]+", written.decode()) if r]
    assert redraws and redraws[0].startswith("generate [") and all(len(r.rstrip()) <= 40 for r in redraws), redraws


def _config_file(path: Path, base_url: str, aggregator: str = "agg") -> Path:
    path.write_text(yaml.safe_dump(moa_config(base_url, [["p1", "p2"], ["p3"]], aggregator=aggregator)))
    return path


def test_another_runs_checkpoint_is_refused(upstream_thread: ScriptedServer, tmp_path) -> None:
    out = tmp_path / "model_outputs.json"
    config = _config_file(tmp_path / "a.yaml", upstream_thread.base_url)
    done = _moa("alpaca-eval", "generate", "-c", str(config), "-o", str(out), "--limit", "3")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith(f"wrote {out}: 3/3 instructions done")
    checkpoint = checkpoint_path(out).read_bytes()

    other = _config_file(tmp_path / "b.yaml", upstream_thread.base_url, aggregator="another-agg")
    refused = _moa("alpaca-eval", "generate", "-c", str(other), "-o", str(out), "--limit", "3")
    assert refused.returncode == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.startswith("error: ") and "was written by a run with a different config" in refused.stderr

    instructions = _write_instructions(tmp_path / "set.json", ["one", "two", "three"])
    refused = _moa("alpaca-eval", "generate", "-c", str(config), "-o", str(out), "--instructions", str(instructions))
    assert refused.returncode == 2 and "different instructions" in refused.stderr
    assert checkpoint_path(out).read_bytes() == checkpoint  # untouched

    more = _moa("alpaca-eval", "generate", "-c", str(config), "-o", str(out), "--limit", "5")  # same run, further
    assert more.returncode == 0 and "5/5 instructions done (3 from the checkpoint, 2 now" in more.stdout


def _checkpointed(out: Path) -> list[int]:
    lines = checkpoint_path(out).read_text().splitlines()[1:] if checkpoint_path(out).exists() else []
    return [json.loads(line)["index"] for line in lines if line.endswith("}")]


def test_sigkill_at_random_moments_then_resume(upstream_thread: ScriptedServer, tmp_path) -> None:
    limit, concurrency, kills = 60, 4, 4
    for model in ("p1", "p2", "p3", "agg"):
        upstream_thread.script(model, answer=echo, latency_s=0.03)
    config = _config_file(tmp_path / "moa.yaml", upstream_thread.base_url)
    out = tmp_path / "model_outputs.json"
    args = [sys.executable, "-m", "moa.cli", "alpaca-eval", "generate", "-c", str(config), "-o", str(out),
            "--limit", str(limit), "--concurrency", str(concurrency)]  # fmt: skip
    rng = random.Random(20240611)
    done_at_kill = []
    for _ in range(kills):
        before = len(_checkpointed(out))
        proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60  # wait until this run has made progress, then kill at a random moment
        while len(_checkpointed(out)) <= before and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        time.sleep(rng.uniform(0.0, 0.4))
        proc.send_signal(signal.SIGKILL)
        assert proc.wait(timeout=30) == -signal.SIGKILL
        done_at_kill.append(len(_checkpointed(out)))
        assert not out.exists()  # never a partial submission
    assert 0 < done_at_kill[0] and done_at_kill[-1] < limit, done_at_kill  # the kills landed mid-run
    assert done_at_kill == sorted(done_at_kill)

    final = subprocess.run(args, capture_output=True, text=True, timeout=120)
    assert final.returncode == 0, final.stderr
    assert f"{limit}/{limit} instructions done ({done_at_kill[-1]} from the checkpoint" in final.stdout
    rows = json.loads(out.read_text())
    instructions = load_instructions()[:limit]
    assert [r["instruction"] for r in rows] == [i.instruction for i in instructions]  # all, once, in order
    assert [r["output"] for r in rows] == [f"[agg] {i.instruction}" for i in instructions]
    assert sorted(set(_checkpointed(out))) == list(range(limit))
    # each kill loses at most the instructions in flight: the aggregator answered each one at most once more
    assert len(upstream_thread.for_model("agg")) <= limit + kills * concurrency


async def test_progress_gives_no_rate_or_eta_before_anything_is_known_and_prints_on_change() -> None:
    plain = io.StringIO()
    progress = Progress("evaluate", 3, plain, tty=False, concurrency=3, interval_s=0.01, quiet_s=3600)
    items = [progress.begin() for _ in range(3)]
    first = progress.line()
    assert "0/3 done" in first and "3 in flight" in first and "rate -" in first and "ETA -" in first
    assert "0.00/s" not in first

    task = asyncio.create_task(progress.heartbeat())  # ~30 heartbeats without a change print one line, not 30
    await asyncio.sleep(0.3)
    task.cancel()
    assert len(plain.getvalue().splitlines()) == 1
    time.sleep(0.05)
    progress.advance(done=1, item=items[0])
    # the other two started with the first and take about as long: they end about now, not in 2 x its time
    eta = progress.eta_s()
    assert eta is not None and eta < 0.05
    assert "2 in flight" in progress.line() and "ETA 0s" in progress.line()
    assert progress.changed()


def test_progress_eta_counts_queued_waves() -> None:
    progress = Progress("generate", 10, io.StringIO(), tty=False, concurrency=2)
    a, b = progress.begin(), progress.begin()
    time.sleep(0.2)
    progress.advance(done=1, item=a)
    progress.advance(done=1, item=b)  # mean 0.2 s an item; 8 queued in waves of 2: 0.8 s
    assert progress.eta_s() == pytest.approx(0.8, abs=0.1)


def test_estimate_states_time_and_costs_local_backends_nothing() -> None:
    from moa.alpaca_eval.estimate import LOCAL_TOKENS_PER_S, REMOTE_CALL_S, REMOTE_TOKENS_PER_S, estimate_job
    from moa.config import load_config

    local = estimate_job(load_config("default"), ["q"] * 4)  # 4 x (4 x 128 + 192) completion tokens, all local
    assert local.cost_usd == 0.0 and local.wall_s() == pytest.approx(4 * (4 * 128 + 192) / LOCAL_TOKENS_PER_S)
    assert "cost unknown" not in local.line() and "(local backends: $0)" in local.line()
    assert "about 1m25s at worst (assumes local models at 33 tokens/s in all)" in local.line()

    config = moa_config("http://127.0.0.1:9/v1", [["p1", "p2"], ["p3"]])  # remote, no prices, rps unset
    for agent in [a for layer in config["layers"] for a in layer["agents"]]:
        agent["max_tokens"] = 100
    config["aggregator"]["max_tokens"] = 50
    remote = estimate_job(load_config(config), ["q"] * 64, concurrency=32)
    per_instruction = 2 * (REMOTE_CALL_S + 100 / REMOTE_TOKENS_PER_S) + REMOTE_CALL_S + 50 / REMOTE_TOKENS_PER_S
    assert remote.wall_s() == pytest.approx(2 * per_instruction)  # two waves of 32 instructions
    assert remote.line().count("no prices") == 1 and "no prices for backend(s) up" in remote.line()


async def test_generate_keeps_engine_output_in_a_log_and_progress_on_stderr(upstream: ScriptedServer, tmp_path) -> None:
    """As ``moa run`` does: what local engines print to file descriptor 2 goes to a log file (``--verbose`` shows
    it), while moa's own progress lines stay on stderr."""
    for model in ("p1", "agg"):
        upstream.script(model, answer=echo)
    config = tmp_path / "moa.yaml"
    config.write_text(yaml.safe_dump(moa_config(upstream.base_url, [["p1"]])))
    out = tmp_path / "model_outputs.json"
    env = {**os.environ, "XDG_CACHE_HOME": str(tmp_path / "cache")}
    args = [
        sys.executable,
        "-m",
        "moa.cli",
        "alpaca-eval",
        "generate",
        "-c",
        str(config),
        "-o",
        str(out),
        "--limit",
        "3",
    ]
    proc = await asyncio.create_subprocess_exec(
        *args, env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    stdout, stderr = await asyncio.wait_for(proc.communicate(), timeout=120)
    assert proc.returncode == 0, stderr.decode()
    assert "generate: 3/3 done" in stderr.decode() and "wrote" in stdout.decode()
    assert (tmp_path / "cache" / "moa" / "logs" / "alpaca-eval-engines.log").is_file()
