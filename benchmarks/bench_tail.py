"""Tail latency against the simulated endpoint with stragglers (10% of calls 5x slower, seeded): quorum and hedging.

The 3-layer MoA of bench_engine (6 + 6 proposers + a streamed aggregator, each call ``ttft`` + ``tokens`` x
``tpot``) is run ``--requests`` times (``--concurrency`` at once) as
(a) wait-for-all (today's default), (b) quorum K=5 of 6 per layer, (c) quorum + hedging of the aggregator and,
beside them, (d) quorum + hedging of every call (proposers at the 0.8 quantile of their latencies) and (e) quorum
K=4 of 6 + hedging of the aggregator and (f) quorum + hedging every call when it has no first token after the
aggregator's delay (calls of one sample are streamed and joined, so a straggler shows at its first token). (With 10% stragglers, 11% of 6-call layers have two or more, so 21% of
requests wait for a straggler under K=5 unless proposers are hedged too: K=5 alone cannot meet a p95 goal.) Printed side by side: p50/p95/p99 latency over the straggler-free
critical path (three sequential calls, measured), the time to the answer's first token, and the extra calls hedging
made. Then (a) and (c) once more without stragglers: hedging and quorum must change nothing there (p50 within 1.03x).

    python -m benchmarks.bench_tail [--requests 200] [--concurrency 10] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from dataclasses import dataclass
from typing import Any

from benchmarks.bench_engine import one_call_latency
from benchmarks.figures import add_json_option, write_figures
from benchmarks.sim_endpoint import SimSettings, launch
from moa import Ensemble

QUORUM = {"min": 5, "grace_ratio": 0.1}  # go on at the 5th of 6, after 10% of the time it took
QUORUM_4 = {"min": 4, "grace_ratio": 0.1}


def tail_config(base_url: str, variant: str, hedge_after_s: float) -> dict[str, Any]:
    """The 3-layer MoA for ``variant``: ``all``, ``quorum``, ``quorum+hedge-agg``, ``quorum+hedge-all``,
    ``quorum4+hedge-agg`` (K=4 of 6) or ``quorum+hedge-first`` (proposers hedged after ``hedge_after_s`` without
    a first token)."""
    hedge: dict[str, Any] = {"after_quantile": 0.8, "min_samples": 20, "max_extra": 0.15}  # its own latencies
    if variant == "quorum+hedge-first":
        hedge = {"after_s": hedge_after_s, "max_extra": 0.15}
    agents = [{"backend": "sim", "model": f"proposer-{i}", "max_tokens": 100} for i in range(6)]
    layer: dict[str, Any] = {"agents": agents}
    if variant != "all":
        layer["wait"] = QUORUM_4 if variant.startswith("quorum4") else QUORUM
    backend = {"type": "openai", "base_url": base_url, "retry": {"max_retries": 8}}
    proposers = {**backend, "hedge": hedge} if variant in ("quorum+hedge-all", "quorum+hedge-first") else backend
    aggregator: dict[str, Any] = {"backend": "agg", "model": "aggregator", "max_tokens": 100}
    if "+hedge" in variant:
        aggregator["hedge"] = {"after_s": hedge_after_s, "max_extra": 0.15}
    return {
        "name": f"bench-tail-{variant}",
        "backends": {"sim": proposers, "agg": backend},
        "layers": [layer, layer],
        "aggregator": aggregator,
    }


@dataclass
class Run:
    latencies: list[float]
    ttfts: list[float]
    calls: int
    hedged: int

    def quantile(self, q: float, values: list[float] | None = None) -> float:
        ordered = sorted(self.latencies if values is None else values)
        return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered)) - 1))]


async def run_variant(base_url: str, variant: str, requests: int, concurrency: int, hedge_after_s: float) -> Run:
    messages = [{"role": "user", "content": "Explain how rainbows form."}]
    latencies: list[float] = []
    ttfts: list[float] = []
    calls = hedged = 0
    async with Ensemble.from_config(tail_config(base_url, variant, hedge_after_s)) as ens:
        gate = asyncio.Semaphore(concurrency)

        async def one() -> None:
            nonlocal calls, hedged
            async with gate:
                started, first = time.monotonic(), None
                async for delta in ens.astream(messages):
                    if delta.content and first is None:
                        first = time.monotonic() - started
                    if delta.trace is not None:
                        calls += len(delta.trace)
                        hedged += sum(r.hedge for r in delta.trace)
                latencies.append(time.monotonic() - started)
                ttfts.append(first or latencies[-1])

        await one()  # warm the connection pools
        latencies.clear()
        ttfts.clear()
        calls = hedged = 0
        await asyncio.gather(*(one() for _ in range(requests)))
    return Run(latencies, ttfts, calls, hedged)


async def measure(args: argparse.Namespace) -> dict[str, Any]:
    clean = SimSettings(ttft_s=args.ttft, tpot_s=args.tpot, tokens=args.tokens)
    tail = SimSettings(args.ttft, args.tpot, args.tokens, straggler_share=args.stragglers, straggler_factor=5.0,
                       seed=args.seed)  # fmt: skip
    hedge_after_s = args.hedge_after if args.hedge_after is not None else 1.25 * args.ttft
    with launch(clean) as url:
        bound = await one_call_latency(url)
    per_call = (args.tokens * args.tpot + args.ttft) * 1.0
    print(f"one call: ttft {args.ttft} s + {args.tokens} x {args.tpot} s = {per_call:.3f} s nominal")
    print(f"straggler-free critical path (3 sequential calls, measured): {bound:.3f} s")
    print(f"stragglers: {args.stragglers:.0%} of calls 5x slower (seed {args.seed}); {args.requests} requests, "
          f"{args.concurrency} at once; quorum {QUORUM} ((e): {QUORUM_4}); aggregator hedge after {hedge_after_s:g} s, max_extra 0.15")  # fmt: skip
    figures: dict[str, Any] = {"critical_path_s": bound, "hedge_after_s": hedge_after_s}
    variants = [("a", "all"), ("b", "quorum"), ("c", "quorum+hedge-agg"), ("d", "quorum+hedge-all"),
                ("e", "quorum4+hedge-agg"), ("f", "quorum+hedge-first")]  # fmt: skip
    print(f"{'':4}{'variant':<20}{'p50':>8}{'p95':>8}{'p99':>8}{'TTFT p50':>10}{'TTFT p95':>10}{'extra calls':>13}")
    with launch(tail) as url:
        for key, variant in variants:
            run = await run_variant(url, variant, args.requests, args.concurrency, hedge_after_s)
            p50, p95, p99 = (run.quantile(q) / bound for q in (0.5, 0.95, 0.99))
            t50, t95 = run.quantile(0.5, run.ttfts), run.quantile(0.95, run.ttfts)
            extra = run.hedged / max(1, run.calls - run.hedged)
            print(f"({key}) {variant:<20}{p50:>7.2f}x{p95:>7.2f}x{p99:>7.2f}x{t50:>9.3f}s{t95:>9.3f}s{extra:>12.1%}")
            figures.update({f"{variant}.p50_over_path": p50, f"{variant}.p95_over_path": p95,
                            f"{variant}.p99_over_path": p99, f"{variant}.ttft_p50_s": t50,
                            f"{variant}.ttft_p95_s": t95, f"{variant}.extra_calls": extra})  # fmt: skip
    print("goals for (f): p95 <= 1.25x, p99 <= 1.5x, extra calls <= 15%")
    with launch(clean) as url:
        base = await run_variant(url, "all", args.requests // 2, args.concurrency, hedge_after_s)
        for key, variant in (("c", "quorum+hedge-agg"), ("f", "quorum+hedge-first")):
            tuned = await run_variant(url, variant, args.requests // 2, args.concurrency, hedge_after_s)
            ratio = statistics.median(tuned.latencies) / statistics.median(base.latencies)
            extra = tuned.hedged / max(1, tuned.calls - tuned.hedged)
            print(
                f"without stragglers: ({key}) p50 / (a) p50 = {ratio:.3f} (goal <= 1.03); ({key}) extra calls {extra:.1%}"
            )
            figures.update({f"clean.{key}_over_a_p50": ratio, f"clean.{key}.extra_calls": extra})
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--concurrency", type=int, default=10, help="requests in flight at once")
    parser.add_argument("--ttft", type=float, default=0.2)
    parser.add_argument("--tpot", type=float, default=0.002)
    parser.add_argument("--tokens", type=int, default=100)
    parser.add_argument("--stragglers", type=float, default=0.1, help="share of calls 5x slower")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--hedge-after", type=float, default=None, help="hedge delay in s (default 1.25 x ttft)")
    add_json_option(parser)
    args = parser.parse_args()
    figures = asyncio.run(measure(args))
    write_figures(args.json, "bench_tail", args, figures)


if __name__ == "__main__":
    main()
