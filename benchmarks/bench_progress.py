"""How soon a streaming client of ``moa serve`` hears something: the first ``moa.progress`` chunk.

A 3-layer MoA (6 + 6 proposers + aggregator) on the simulated endpoint, requests one at a time through
``moa serve``: with ``stream_options.include_progress`` (time to the first progress chunk and to the first token)
and without it (time to the first token), side by side. Goal: the first progress event reaches the client
within 50 ms of its request (p95), and the option costs the first token nothing measurable.

    python -m benchmarks.bench_progress [--requests 20] [--ttft 0.2] [--tpot 0.002] [--tokens 100] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import time

import aiohttp

from benchmarks.bench_server import moa_serve, new_session, pct
from benchmarks.figures import add_json_option, write_figures
from benchmarks.sim_endpoint import SimSettings, launch

PROMPT = [{"role": "user", "content": "Explain how rainbows form, in detail."}]


def moa_config(sim_url: str, width: int) -> dict:
    agents = [{"backend": "sim", "model": f"proposer-{i}"} for i in range(width)]
    return {
        "name": "bench",
        "backends": {"sim": {"type": "openai", "base_url": sim_url, "retry": {"max_retries": 0}}},
        "layers": [{"agents": agents}, {"agents": agents}],
        "aggregator": {"backend": "sim", "model": "aggregator"},
    }


async def once(session: aiohttp.ClientSession, url: str, progress: bool) -> tuple[float | None, float]:
    """One streamed request: seconds to its first progress chunk (None without the option) and first token."""
    body: dict = {"model": "bench", "messages": PROMPT, "stream": True}
    if progress:
        body["stream_options"] = {"include_progress": True}
    started = time.perf_counter()
    first_progress = first_token = None
    async with session.post(f"{url}/chat/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
        async for line in resp.content:
            if first_progress is None and b'"object": "moa.progress"' in line:
                first_progress = time.perf_counter() - started
            elif first_token is None and b'"content": "' in line and b'"content": ""' not in line:
                first_token = time.perf_counter() - started
            elif line.startswith(b'data: {"error"'):
                raise RuntimeError(line.decode()[:200])
    if first_token is None:
        raise RuntimeError("the stream ended without a token")
    return first_progress, first_token


async def bench(args: argparse.Namespace, url: str) -> dict[str, float]:
    progress_s: list[float] = []
    ttft_with: list[float] = []
    ttft_without: list[float] = []
    async with new_session() as session:
        await once(session, url, True)  # warm: connections, the server's first request
        for _ in range(args.requests):  # alternating, so that both see the same machine
            first, ttft = await once(session, url, True)
            assert first is not None, "no moa.progress chunk came"
            progress_s.append(first)
            ttft_with.append(ttft)
            ttft_without.append((await once(session, url, False))[1])
    return {
        "first_progress_p50_ms": 1000 * pct(progress_s, 50),
        "first_progress_p95_ms": 1000 * pct(progress_s, 95),
        "ttft_with_progress_p50_s": pct(ttft_with, 50),
        "ttft_without_progress_p50_s": pct(ttft_without, 50),
    }


def report(figures: dict[str, float]) -> None:
    print("first moa.progress chunk at the client, from its request (goal p95 <= 50 ms):")
    print(f"  p50 {figures['first_progress_p50_ms']:7.1f} ms   p95 {figures['first_progress_p95_ms']:7.1f} ms")
    print("first token, p50:")
    print(f"  with progress    {figures['ttft_with_progress_p50_s']:7.3f} s")
    print(f"  without progress {figures['ttft_without_progress_p50_s']:7.3f} s")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=20, help="requests of each kind, one at a time")
    parser.add_argument("--width", type=int, default=6, help="proposers per layer (two layers)")
    parser.add_argument("--ttft", type=float, default=0.2, help="upstream seconds to the first token")
    parser.add_argument("--tpot", type=float, default=0.002, help="upstream seconds per further token")
    parser.add_argument("--tokens", type=int, default=100, help="tokens per upstream answer")
    add_json_option(parser)
    args = parser.parse_args()
    with launch(SimSettings(ttft_s=args.ttft, tpot_s=args.tpot, tokens=args.tokens)) as sim_url:
        with moa_serve(moa_config(sim_url, args.width)) as (url, _pid):
            figures = asyncio.run(bench(args, url))
    report(figures)
    write_figures(args.json, "bench_progress", args, figures)


if __name__ == "__main__":
    main()
