"""The vLLM backend on the embedded SmolLM2-135M-Instruct, on this machine. Prints one figure a line.

1. Self-MoA's 6 samples as one request (n=6: one prefill shared by the samples) against six concurrent requests
   (n=1 each), in completion tokens per second, side by side: for a short prompt, and for a long one like the
   prompt of a layer that reads earlier answers.
2. VLLMProposer's overhead over calling vLLM's AsyncLLM directly, on the same engine with the same prompts and
   seeded sampling (goal: <= 5% slower), in tokens/s under load and in the latency of one-token calls.
   Rounds alternate which side goes first so that drift on a shared machine hits both alike.
3. The shipped ``default`` recipe end to end (engines started) against ``default-drafting``, its aggregator on the
   torch backend with reference drafting on CPU: seconds per request, side by side in one run, one recipe after
   the other (two vLLM engines at once do not fit this machine's KV-cache check) (goal: after >= 1.5x faster);
   their samples are seeded alike, so both aggregators read the same references.

4. ``--part cold``: cold ``moa run`` processes, per phase (first line, conversion, engine start, samples,
   aggregation, shutdown), before (``--before DIR``: a checkout of commit 344620d, e.g. ``git worktree add
   /tmp/before 344620d``, the parent of issue 18's first change) and after, side by side; the very first run
   converts the model into a fresh cache (``XDG_CACHE_HOME``; ``--no-first`` skips it), later runs find it
   converted. Then the warm path, per phase as well: ``moa run --server`` against a ``moa serve`` of the default
   recipe started once (``--warm`` runs), for each side whose ``moa run`` has ``--server`` (344620d's has not:
   there every run was cold). Each side runs its own checkout's default recipe (its caps). Run it under
   ``flock /tmp/moa-heavy.lock``.

    python -m benchmarks.bench_local [--part all|proposer|e2e|cold] [--rounds 4] [--requests 4] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from collections.abc import Awaitable, Callable
from functools import partial
from typing import Any

import yaml

from benchmarks.figures import add_json_option, write_figures
from moa import Ensemble
from moa.config import VLLMBackendConfig, builtin_configs, local_device, parse_config
from moa.types import Message, SamplingParams
from proposers.vllm_engine import VLLMProposer

MODEL = "embedded:smollm2-135m-instruct"
SHORT = [Message("user", "Why is the sky blue?")]
_PASSAGE = (
    "The keeper climbed the spiral stairs at dusk, trimmed the wick, polished the great lens and wrote the "
    "weather in the log: wind from the north-east, a falling glass, three ships sighted before noon. "
)
LONG = [Message("user", "".join(f"Entry {i}. {_PASSAGE}" for i in range(30)) + "\nSummarise the log in three lines.")]


async def timed(call: Callable[[], Awaitable[int]]) -> tuple[int, float]:
    """(completion tokens, seconds) of one call."""
    started = time.perf_counter()
    tokens = await call()
    return tokens, time.perf_counter() - started


def tokens_per_s(runs: list[tuple[int, float]]) -> float:
    return sum(t for t, _ in runs) / sum(s for _, s in runs)


# ---- 1. n=6 in one request vs six requests -------------------------------------------------------------------


async def one_request(proposer: VLLMProposer, messages: list[Message], params: SamplingParams) -> int:
    return (await proposer.generate(messages, params, n=6)).usage.completion_tokens


async def six_requests(proposer: VLLMProposer, messages: list[Message], params: SamplingParams) -> int:
    results = await asyncio.gather(*(proposer.generate(messages, params) for _ in range(6)))
    return sum(r.usage.completion_tokens for r in results)


def fresh(messages: list[Message]) -> list[Message]:
    """``messages`` behind a unique first line, so no earlier round's cached prefix helps."""
    return [Message(messages[0].role, f"[{uuid.uuid4().hex[:8]}]\n{messages[0].content}"), *messages[1:]]


async def self_moa_figures(proposer: VLLMProposer, rounds: int) -> dict[str, float]:
    figures: dict[str, float] = {}
    for label, messages, max_tokens in (("short", SHORT, 256), ("long", LONG, 64)):
        params = SamplingParams(temperature=0.7, max_tokens=max_tokens)
        prompt_tokens = (await proposer.generate(messages, SamplingParams(max_tokens=1))).usage.prompt_tokens
        one: list[tuple[int, float]] = []
        six: list[tuple[int, float]] = []
        for r in range(rounds):  # alternate which side goes first
            sides = [(one, one_request), (six, six_requests)]
            for runs, call in sides if r % 2 == 0 else sides[::-1]:
                runs.append(await timed(partial(call, proposer, fresh(messages), params)))
        a, b = tokens_per_s(one), tokens_per_s(six)
        print(
            f"self-moa x6, {label} prompt ({prompt_tokens} tok, max_tokens {max_tokens}), n=6 in one request: {a:.0f} tok/s"
        )
        print(f"self-moa x6, {label} prompt, six concurrent requests: {b:.0f} tok/s (one request = {a / b:.2f}x)")
        figures[f"self_moa.{label}.prompt_tokens"] = prompt_tokens
        figures[f"self_moa.{label}.n6_one_request_tok_per_s"] = a
        figures[f"self_moa.{label}.six_requests_tok_per_s"] = b
        figures[f"self_moa.{label}.one_request_over_six"] = a / b
    return figures


# ---- 2. the proposer's overhead over AsyncLLM ----------------------------------------------------------------


async def direct(proposer: VLLMProposer, messages: list[Message], params: SamplingParams, n: int) -> int:
    """The same call written against vLLM alone: chat template, token prompt, one generate."""
    from vllm import SamplingParams as VLLMSamplingParams
    from vllm.inputs.engine import tokens_input
    from vllm.sampling_params import RequestOutputKind

    engine = proposer.engine
    assert engine is not None
    ids = engine.tokenizer.apply_chat_template(
        [m.to_dict() for m in messages], add_generation_prompt=True, tokenize=True, return_dict=False
    )
    sampling = VLLMSamplingParams(
        n=n,
        temperature=params.temperature,
        max_tokens=params.max_tokens,
        seed=params.seed,
        output_kind=RequestOutputKind.FINAL_ONLY,
    )
    final = None
    async for out in engine.generate(tokens_input(ids), sampling, uuid.uuid4().hex):
        final = out
    assert final is not None
    return sum(len(o.token_ids) for o in final.outputs)


async def through_proposer(proposer: VLLMProposer, messages: list[Message], params: SamplingParams, n: int) -> int:
    return (await proposer.generate(messages, params, n=n)).usage.completion_tokens


async def overhead_figures(proposer: VLLMProposer, rounds: int, requests: int) -> dict[str, float]:
    seeded = [SamplingParams(temperature=0.7, max_tokens=96, seed=i) for i in range(requests)]

    async def batch(call: Callable[..., Awaitable[int]]) -> int:
        return sum(await asyncio.gather(*(call(proposer, SHORT, p, 6) for p in seeded)))

    ours: list[tuple[int, float]] = []
    theirs: list[tuple[int, float]] = []
    for r in range(rounds):  # alternate which side goes first
        sides = [(theirs, direct), (ours, through_proposer)]
        for runs, call in sides if r % 2 == 0 else sides[::-1]:
            runs.append(await timed(partial(batch, call)))
    a, b = tokens_per_s(theirs), tokens_per_s(ours)
    per_round = [tokens_per_s([t]) / tokens_per_s([o]) - 1 for o, t in zip(ours, theirs, strict=True)]
    print(f"vLLM AsyncLLM directly, {requests} requests x n=6 x 96 tok at once: {a:.0f} tok/s")
    print(f"VLLMProposer, same prompts and seeded sampling: {b:.0f} tok/s")
    print(f"VLLMProposer overhead: {100 * (a / b - 1):+.1f}% (goal <= 5%)")
    print(f"VLLMProposer overhead, median of {len(per_round)} rounds: {100 * statistics.median(per_round):+.1f}%")
    return {
        "overhead.async_llm_tok_per_s": a,
        "overhead.proposer_tok_per_s": b,
        "overhead.percent": 100 * (a / b - 1),
        "overhead.median_round_percent": 100 * statistics.median(per_round),
    }


async def latency_figures(proposer: VLLMProposer, calls: int = 40) -> dict[str, float]:
    """One-token calls, one at a time, the two sides taking turns: where per-call work shows most."""
    one_token = SamplingParams(temperature=0.0, max_tokens=1)
    theirs: list[float] = []
    ours: list[float] = []
    for _ in range(calls):
        theirs.append((await timed(partial(direct, proposer, SHORT, one_token, 1)))[1])
        ours.append((await timed(partial(through_proposer, proposer, SHORT, one_token, 1)))[1])
    a, b = statistics.median(theirs), statistics.median(ours)
    print(f"one-token call latency, median of {calls}: AsyncLLM {1000 * a:.1f} ms, VLLMProposer {1000 * b:.1f} ms")
    return {"latency.async_llm_median_ms": 1000 * a, "latency.proposer_median_ms": 1000 * b}


# ---- 3. the default recipe end to end, before and after -----------------------------------------------------

QUESTIONS = [
    "Why is the sky blue?",
    "Give three tips for a first job interview.",
    "Explain what a hash table is to a new programmer.",
    "Write a short note inviting a neighbour to dinner.",
]


def benched(data: dict[str, Any]) -> Ensemble:
    """``data`` as run here: the samples seeded alike, so both aggregators read the same references."""
    for layer in data["layers"]:
        for agent in layer["agents"]:
            agent["seed"] = 7
    return Ensemble(parse_config(data))


async def e2e_figures(requests: int) -> dict[str, float]:
    """One recipe after the other, each started, warmed and closed before the next starts: two vLLM engines at
    once failed vLLM's KV-cache memory check on this machine ("Available memory on node 0 ... is less than
    requested")."""
    recipes = {"before": "default", "after": "default-drafting"}
    seconds: dict[str, list[float]] = {"before": [], "after": []}
    tokens: dict[str, list[float]] = {"before": [], "after": []}  # the aggregator's tokens/s
    for side, name in recipes.items():
        ensemble = benched(yaml.safe_load(builtin_configs()[name].read_text(encoding="utf-8")))
        try:
            started = time.perf_counter()
            await ensemble.astart()
            print(f"{name} on {local_device()}: started in {time.perf_counter() - started:.0f} s")
            await ensemble.acomplete([{"role": "user", "content": "Hi"}], max_tokens=8)  # warm-up
            for i in range(requests):
                question = [{"role": "user", "content": QUESTIONS[i % len(QUESTIONS)]}]
                t0 = time.perf_counter()
                result = await ensemble.acomplete(question, seed=i)
                seconds[side].append(time.perf_counter() - t0)
                final = result.trace[-1]
                tokens[side].append(final.completion_tokens / final.latency_s if final.latency_s else 0.0)
                print(f"  request {i + 1} {side}: {seconds[side][-1]:.1f} s, aggregator {tokens[side][-1]:.1f} tok/s")
        finally:
            await ensemble.aclose()
    b, a = statistics.median(seconds["before"]), statistics.median(seconds["after"])
    tb, ta = statistics.median(tokens["before"]), statistics.median(tokens["after"])
    print(
        f"default recipe before (vLLM aggregates), median of {requests}: {b:.1f} s a request, aggregator {tb:.1f} tok/s"
    )
    print(
        f"default recipe after (torch + reference drafting aggregates): {a:.1f} s a request, aggregator {ta:.1f} tok/s"
    )
    print(f"default recipe end to end: after = {b / a:.2f}x faster (goal >= 1.5x)")
    return {
        "e2e.before_median_s": b,
        "e2e.after_median_s": a,
        "e2e.speedup": b / a,
        "e2e.before_aggregator_tok_per_s": tb,
        "e2e.after_aggregator_tok_per_s": ta,
    }


async def proposer_figures(rounds: int, requests: int) -> dict[str, float]:
    proposer = VLLMProposer("local", VLLMBackendConfig(type="vllm", model=MODEL))
    try:
        started = time.perf_counter()
        await proposer.start()
        figures = {"engine_start_s": time.perf_counter() - started}
        print(f"engine start (and the one-time conversion on a first run): {figures['engine_start_s']:.1f} s")
        await proposer.generate(SHORT, SamplingParams(max_tokens=16), n=6)  # warm-up
        figures.update(await self_moa_figures(proposer, rounds))
        figures.update(await overhead_figures(proposer, rounds, requests))
        figures.update(await latency_figures(proposer))
        return figures
    finally:
        await proposer.aclose()


# ---- 4. cold and warm `moa run`, per phase, before and after ------------------------------------------------

QUESTION = "Why is the sky blue?"
#: (phase, the stderr line that ends it); a phase lasts from the end of the one before
PHASES = (
    ("first line", ""),
    ("conversion", "moa: converted "),
    ("engine start", "ready in "),
    ("samples", "layer 1 done"),
    ("aggregation", "aggregator aggregator"),
)


def timed_lines(command: list[str], env: dict[str, str], cwd: str) -> tuple[list[tuple[float, str]], float]:
    """Run ``command``; every stderr line (split at CR too) with the seconds since the start, and the exit time."""
    import subprocess

    started = time.monotonic()
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env, cwd=cwd)
    assert proc.stderr is not None
    lines: list[tuple[float, str]] = []
    buf = b""
    while chunk := proc.stderr.read1(4096):
        buf += chunk
        *done, buf = buf.replace(b"\r", b"\n").split(b"\n")
        lines += [(time.monotonic() - started, x.decode(errors="replace")) for x in done if x.strip()]
    proc.wait()
    return lines, time.monotonic() - started


def phases(lines: list[tuple[float, str]], exit_s: float) -> dict[str, float]:
    """Seconds per phase of one run's stderr (a phase not seen, such as a conversion already done, is 0)."""
    out: dict[str, float] = {}
    at = 0.0
    for name, marker in PHASES:
        hits = [t for t, line in lines if marker in line and t >= at and (name != "aggregation" or "done" in line)]
        if name == "first line":
            hits = [lines[0][0]] if lines else []
        if hits:
            out[name], at = hits[0] - at, hits[0]
        else:
            out[name] = 0.0
    out["shutdown"] = exit_s - at
    out["total"] = exit_s
    return out


def moa_run(root: str, env: dict[str, str], *extra: str) -> dict[str, float]:
    """The phases of one ``moa run`` of ``QUESTION`` in the checkout ``root`` (``extra``: more arguments)."""
    import os
    import sys

    command = [sys.executable, "-m", "moa.cli", "run", *extra, QUESTION]
    lines, exit_s = timed_lines(command, {**os.environ, **env, "PYTHONPATH": root}, root)
    return phases(lines, exit_s)


def has_server_option(root: str) -> bool:
    """Whether the checkout's ``moa run`` takes ``--server`` (the warm path; not before commit d7c476a)."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": root}
    command = [sys.executable, "-m", "moa.cli", "run", "--help"]
    shown = subprocess.run(command, env=env, cwd=root, capture_output=True, text=True, check=False)
    return "--server" in shown.stdout


def warm_runs(root: str, runs: int = 2) -> list[dict[str, float]]:
    """The phases of ``moa run --server`` against a ``moa serve`` (default recipe) started once, ``runs`` times."""
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": root}
    command = [sys.executable, "-m", "moa.cli", "serve", "--port", "0"]
    serve = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env, cwd=root)
    try:
        assert serve.stdout is not None
        url = next(x for x in serve.stdout if x.startswith("moa serve: listening on ")).split()[-1]
        return [moa_run(root, {}, "--server", url) for _ in range(runs)]
    finally:
        serve.terminate()
        serve.wait(timeout=120)


def cold_figures(before: str | None, first: bool, warm: int) -> dict[str, float]:
    """Cold runs (the first into a fresh cache when ``first``) and ``warm`` warm runs of each side, per phase."""
    import tempfile
    from pathlib import Path

    after = str(Path(__file__).resolve().parents[1])
    sides = {**({"before": before} if before else {}), "after": after}
    figures: dict[str, float] = {}
    table: dict[str, dict[str, float]] = {}
    notes: list[str] = []
    for side, root in sides.items():
        if first:
            with tempfile.TemporaryDirectory() as cache:
                table[f"{side} first"] = moa_run(root, {"XDG_CACHE_HOME": cache})  # converts into a fresh cache
        table[f"{side} cold"] = moa_run(root, {})
        if not has_server_option(root):
            notes.append(f"{side}: moa run has no --server (every run is cold)")
            continue
        for i, run in enumerate(warm_runs(root, warm), 1):
            table[f"{side} warm{i}"] = run
    columns = list(table)
    width = max(14, *(len(c) + 2 for c in columns))
    print(f"{'phase (s)':<14}" + "".join(f"{c:>{width}}" for c in columns))
    for phase in [p for p, _ in PHASES] + ["shutdown", "total"]:
        print(f"{phase:<14}" + "".join(f"{table[c][phase]:>{width}.1f}" for c in columns))
        for c in columns:
            figures[f"cold.{c.replace(' ', '_')}.{phase.replace(' ', '_')}_s"] = table[c][phase]
    for note in notes:
        print(note)
    print("goals: cold total <= 100 s, warm total <= 15 s")
    return figures


async def main(part: str, rounds: int, requests: int) -> dict[str, float]:
    figures = await proposer_figures(rounds, requests) if part in ("all", "proposer") else {}
    if part in ("all", "e2e"):
        figures.update(await e2e_figures(requests))
    return figures


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--part", choices=["all", "proposer", "e2e", "cold"], default="all", help="which figures (see above)"
    )
    parser.add_argument("--before", metavar="DIR", help="cold: a checkout of the commit to compare with (344620d)")
    parser.add_argument("--no-first", action="store_true", help="cold: skip the runs that convert into a fresh cache")
    parser.add_argument("--warm", type=int, default=2, help="cold: warm runs per side that has moa run --server")
    parser.add_argument("--rounds", type=int, default=4, help="rounds per comparison")
    parser.add_argument(
        "--requests",
        type=int,
        default=4,
        help="concurrent requests in the overhead comparison; e2e: requests per recipe",
    )
    add_json_option(parser)
    args = parser.parse_args()
    if args.part == "cold":
        write_figures(args.json, "bench_local", args, cold_figures(args.before, not args.no_first, args.warm))
    else:
        write_figures(args.json, "bench_local", args, asyncio.run(main(args.part, args.rounds, args.requests)))
