"""``moa alpaca-eval generate`` at a backend's rate limit. Prints one figure a line.

AlpacaEval's 805 instructions through a 3-layer MoA (6 + 6 proposers + aggregator: 13 calls each) against the
simulated endpoint (run in its own process) admitting R requests/s, with the backend's limiter set to R. The
whole product path runs: checkpoint with an fsync per instruction, progress, atomic final write. Figures: wall
time against the bound (calls / R), achieved rate / R (goal >= 0.95), requests the endpoint refused (429), and
this process's peak memory.

    python -m benchmarks.bench_alpaca_eval [--rps 200] [--limit 805] [--concurrency 32] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from benchmarks.bench_engine import three_layer_config
from benchmarks.figures import add_json_option, write_figures
from benchmarks.sim_endpoint import SimSettings, launch
from moa.alpaca_eval.generate import GenerateOptions, generate

CALLS_PER_INSTRUCTION = 13


def _peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def _endpoint_stats(base_url: str) -> dict:
    with urllib.request.urlopen(base_url.removesuffix("/v1") + "/stats", timeout=10) as resp:
        return json.loads(resp.read())


async def _run(base_url: str, rps: float, limit: int, concurrency: int, out: Path) -> float:
    options = GenerateOptions(three_layer_config(base_url, {"rps": rps}), out, limit=limit, concurrency=concurrency)
    started = time.monotonic()
    report = await generate(options, sys.stderr)
    wall = time.monotonic() - started
    if report.failures or not report.written:
        raise SystemExit(f"run incomplete: {len(report.failures)} failed")
    return wall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rps", type=float, default=200.0, help="R: the endpoint's and the backend's rate")
    parser.add_argument("--limit", type=int, default=805, help="instructions")
    parser.add_argument("--concurrency", type=int, default=32, help="instructions in flight (the CLI's default)")
    add_json_option(parser)
    args = parser.parse_args()
    settings = SimSettings(ttft_s=0.05, tpot_s=0.002, tokens=50, rps=args.rps, burst=max(1, int(args.rps // 20)))
    rss_before = _peak_rss_mib()
    with tempfile.TemporaryDirectory() as tmp, launch(settings) as url:
        out = Path(tmp) / "model_outputs.json"
        wall = asyncio.run(_run(url, args.rps, args.limit, args.concurrency, out))
        rows = len(json.loads(out.read_text()))
        stats = _endpoint_stats(url)
    calls = args.limit * CALLS_PER_INSTRUCTION
    bound = calls / args.rps
    print(f"{rows} instructions x {CALLS_PER_INSTRUCTION} calls = {calls} calls at R = {args.rps:g} req/s, "
          f"concurrency {args.concurrency}, endpoint ttft {settings.ttft_s}s + {settings.tokens} x {settings.tpot_s}s")  # fmt: skip
    print(f"wall {wall:.1f} s vs bound calls / R = {bound:.1f} s ({wall / bound:.3f}x)")
    print(f"achieved rate: {calls / wall:.1f} req/s = {calls / wall / args.rps:.3f} R (goal >= 0.95)")
    print(f"endpoint: {stats['admitted']} admitted, {stats['rejected']} refused with 429")
    print(f"peak RSS of the generating process: {_peak_rss_mib():.0f} MiB (before the run: {rss_before:.0f} MiB)")
    figures = {
        "instructions": rows,
        "calls": calls,
        "wall_s": wall,
        "bound_s": bound,
        "wall_over_bound": wall / bound,
        "rate_per_s": calls / wall,
        "rate_over_r": calls / wall / args.rps,
        "endpoint_admitted": stats["admitted"],
        "endpoint_refused_429": stats["rejected"],
        "peak_rss_mib": _peak_rss_mib(),
        "rss_before_mib": rss_before,
    }
    write_figures(args.json, "bench_alpaca_eval", args, figures)


if __name__ == "__main__":
    main()
