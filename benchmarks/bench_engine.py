"""Engine figures against the simulated endpoint (run in its own process). Prints one figure a line.

(1) one 3-layer MoA request (6 + 6 proposers + aggregator): end-to-end latency / critical-path bound, where
    the bound is three sequential single calls measured in the same run (goal <= 1.03); beside it the same
    ensemble with calls made one at a time, as a sequential implementation would.
(2) AlpacaEval's 805 instructions through that ensemble against an endpoint admitting R requests/s, with the
    backend limited to R: achieved rate / R (goal >= 0.95).

    python -m benchmarks.bench_engine [--rps 200] [--instructions 805] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from typing import Any

from benchmarks.data import alpaca_eval_instructions
from benchmarks.figures import add_json_option, write_figures
from benchmarks.sim_endpoint import SimSettings, launch
from moa import Ensemble
from moa.config import OpenAIBackendConfig
from moa.types import Message, SamplingParams
from proposers.openai_http import OpenAIProposer


def three_layer_config(base_url: str, rate_limit: dict[str, Any] | None = None) -> dict[str, Any]:
    agents = [{"backend": "sim", "model": f"proposer-{i}", "max_tokens": 100} for i in range(6)]
    return {
        "name": "bench-3-layer",
        "backends": {
            "sim": {"type": "openai", "base_url": base_url, "rate_limit": rate_limit or {}, "retry": {"max_retries": 8}}
        },  # fmt: skip
        "layers": [{"agents": agents}, {"agents": agents}],
        "aggregator": {"backend": "sim", "model": "aggregator", "max_tokens": 100},
    }


async def one_call_latency(base_url: str) -> float:
    proposer = OpenAIProposer("sim", OpenAIBackendConfig(type="openai", base_url=base_url, model="m"))
    try:
        await proposer.generate([Message("user", "warm up")], SamplingParams(max_tokens=100))
        started = time.monotonic()
        for _ in range(3):
            await proposer.generate([Message("user", "x" * 2000)], SamplingParams(max_tokens=100))
        return time.monotonic() - started
    finally:
        await proposer.aclose()


async def moa_latency(base_url: str, rate_limit: dict[str, Any] | None = None, repeats: int = 3) -> float:
    messages = [{"role": "user", "content": "Explain how rainbows form."}]
    async with Ensemble.from_config(three_layer_config(base_url, rate_limit)) as ens:
        await ens.acomplete(messages)  # warm the connection pool
        times = []
        for _ in range(repeats):
            started = time.monotonic()
            await ens.acomplete(messages)
            times.append(time.monotonic() - started)
    return statistics.median(times)


async def critical_path(settings: SimSettings) -> dict[str, float]:
    with launch(settings) as url:
        bound = await one_call_latency(url)
        concurrent = await moa_latency(url)
        sequential = await moa_latency(url, {"concurrency": 1}, repeats=1)
    print(f"single call latency (ttft {settings.ttft_s}s + {settings.tokens} x {settings.tpot_s}s): {bound / 3:.3f} s")
    print(f"critical-path bound (3 sequential calls, measured): {bound:.3f} s")
    print(f"3-layer MoA (6+6+1 calls), moa: {concurrent:.3f} s = {concurrent / bound:.3f}x the bound (goal <= 1.03)")
    print(f"3-layer MoA, calls one at a time: {sequential:.3f} s = {sequential / bound:.2f}x the bound")
    return {
        "single_call_s": bound / 3,
        "critical_path_bound_s": bound,
        "moa_request_s": concurrent,
        "moa_request_over_bound": concurrent / bound,
        "sequential_request_s": sequential,
        "sequential_request_over_bound": sequential / bound,
    }


async def rate_limited_batch(rps: float, count: int, concurrency: int) -> dict[str, float]:
    settings = SimSettings(ttft_s=0.05, tpot_s=0.002, tokens=50, rps=rps, burst=max(1, int(rps // 20)))
    instructions = alpaca_eval_instructions(count)
    with launch(settings) as url:
        async with Ensemble.from_config(three_layer_config(url, {"rps": rps})) as ens:
            gate = asyncio.Semaphore(concurrency)
            retries = 0

            async def one(text: str) -> None:
                nonlocal retries
                async with gate:
                    result = await ens.acomplete([{"role": "user", "content": text}])
                retries += sum(r.retries for r in result.trace)

            started = time.monotonic()
            await asyncio.gather(*(one(t) for t in instructions))
            wall = time.monotonic() - started
    calls = count * 13
    print(
        f"{count} instructions x 13 calls = {calls} calls at R = {rps:g} req/s: wall {wall:.1f} s, bound {calls / rps:.1f} s"
    )
    print(
        f"achieved rate: {calls / wall:.1f} req/s = {calls / wall / rps:.3f} R (goal >= 0.95); retries after 429: {retries}"
    )
    return {
        "batch.instructions": count,
        "batch.calls": calls,
        "batch.wall_s": wall,
        "batch.bound_s": calls / rps,
        "batch.rate_per_s": calls / wall,
        "batch.rate_over_r": calls / wall / rps,
        "batch.retries_after_429": retries,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rps", type=float, default=200.0)
    parser.add_argument("--instructions", type=int, default=805)
    parser.add_argument("--concurrency", type=int, default=128, help="instructions in flight at once")
    parser.add_argument("--skip-batch", action="store_true")
    add_json_option(parser)
    args = parser.parse_args()
    figures = asyncio.run(critical_path(SimSettings(ttft_s=0.2, tpot_s=0.01, tokens=100)))
    if not args.skip_batch:
        figures.update(asyncio.run(rate_limited_batch(args.rps, args.instructions, args.concurrency)))
    write_figures(args.json, "bench_engine", args, figures)


if __name__ == "__main__":
    main()
