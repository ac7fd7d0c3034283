"""``moa serve`` under load: N concurrent streaming clients on loopback against the simulated endpoint.

Each client makes requests back to back. Two populations of clients run at the same time, one per path:

    direct  the client makes the ensemble's calls itself: the proposer's call, then the aggregator's, streamed
    served  the client streams one request through ``moa serve`` (one proposer + aggregator ensemble)

Both do the same upstream work, so served - direct is what the server (HTTP, SSE relay, engine) adds. Prints
requests completed, errors, TTFT and total at p50/p99 for both paths and the difference, and the server's CPU
time per request. Goal: p99 added <= 10 ms, zero errors.

    python -m benchmarks.bench_server [--clients 200] [--requests 5] [--tokens 64] [--tpot 0.02] [--stagger 2] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import yaml

from benchmarks.figures import add_json_option, write_figures
from benchmarks.sim_endpoint import SimSettings, launch

PROMPT = [{"role": "user", "content": "Explain how rainbows form, in detail."}]


def ensemble_config(sim_url: str, proposer_tokens: int) -> dict:
    return {
        "name": "bench",
        "backends": {"sim": {"type": "openai", "base_url": sim_url, "retry": {"max_retries": 0}}},
        "layers": [{"agents": [{"backend": "sim", "model": "proposer", "max_tokens": proposer_tokens}]}],
        "aggregator": {"backend": "sim", "model": "aggregator"},
    }


@contextmanager
def moa_serve(config: dict, loop: str = "auto") -> Iterator[tuple[str, int]]:
    """``moa serve`` in its own process; yields its base URL and pid."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(config))
        limits = ["--max-queue", "100000", "--loop", loop]
        command = [sys.executable, "-m", "moa.cli", "serve", "-c", str(path), "--port", "0", *limits]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        try:
            line = proc.stdout.readline() if proc.stdout else ""
            if "listening on " not in line:
                raise RuntimeError(f"moa serve did not start: {line!r}")
            yield line.split("listening on ", 1)[1].strip(), proc.pid
        finally:
            proc.terminate()
            proc.wait(timeout=30)


def cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


def machine_busy() -> tuple[float, float]:
    """(busy, total) CPU ticks of the whole machine so far, over all cores (Linux /proc/stat)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = ticks[3] + ticks[4]  # idle + iowait
    return sum(ticks) - idle, sum(ticks)


def _is_token(line: bytes) -> bool:
    return b'"content": "' in line and b'"content": ""' not in line


async def _stream(session: aiohttp.ClientSession, url: str, body: dict, started: float) -> float:
    """Stream one completion to its end; returns the time of the first token (relative to ``started``)."""
    first = None
    async with session.post(f"{url}/chat/completions", json={**body, "stream": True}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
        async for line in resp.content:
            if first is None and line.startswith(b"data: ") and _is_token(line):
                first = time.perf_counter() - started
            elif line.startswith(b'data: {"error"'):
                raise RuntimeError(line.decode()[:200])
            elif line == b"data: [DONE]\n":
                break
    if first is None:
        raise RuntimeError("the stream ended without a token")
    return first


async def direct_once(session: aiohttp.ClientSession, sim_url: str, proposer_tokens: int) -> tuple[float, float]:
    started = time.perf_counter()
    body = {"model": "proposer", "messages": PROMPT, "max_tokens": proposer_tokens}
    async with session.post(f"{sim_url}/chat/completions", json=body) as resp:
        proposal = (await resp.json())["choices"][0]["message"]["content"]
    messages = [{"role": "system", "content": proposal}, *PROMPT]
    ttft = await _stream(session, sim_url, {"model": "aggregator", "messages": messages}, started)
    return ttft, time.perf_counter() - started


async def served_once(session: aiohttp.ClientSession, moa_url: str) -> tuple[float, float]:
    started = time.perf_counter()
    ttft = await _stream(session, moa_url, {"model": "bench", "messages": PROMPT}, started)
    return ttft, time.perf_counter() - started


async def run_clients(
    session: aiohttp.ClientSession, clients: int, requests: int, once, stagger_s: float
) -> tuple[list[tuple[float, float]], list[str]]:
    """``clients`` at once, each making ``requests`` back to back after a random wait of up to ``stagger_s``
    (so that arrivals spread as in a steady state); (ttft, total) of each success, and the errors."""
    samples: list[tuple[float, float]] = []
    errors: list[str] = []

    async def client() -> None:
        await asyncio.sleep(random.uniform(0, stagger_s))
        for _ in range(requests):
            try:
                samples.append(await once(session))
            except Exception as e:  # counted and reported, never hidden
                errors.append(f"{type(e).__name__}: {e}")

    await asyncio.gather(*(client() for _ in range(clients)))
    return samples, errors


def new_session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0), timeout=aiohttp.ClientTimeout(total=600))


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q / 100 * len(ordered)))]


async def bench(args: argparse.Namespace) -> None:
    settings = SimSettings(ttft_s=args.ttft, tpot_s=args.tpot, tokens=args.tokens)
    with launch(settings) as sim_url, moa_serve(ensemble_config(sim_url, args.proposer_tokens), args.loop) as served:
        moa_url, pid = served
        paths = {
            "direct": lambda s: direct_once(s, sim_url, args.proposer_tokens),
            "served": lambda s: served_once(s, moa_url),
        }
        sessions = {name: new_session() for name in paths}
        try:
            # one untimed request per client and path: connections open, as for clients that stay connected
            await asyncio.gather(*(run_clients(sessions[n], args.clients, 1, once, 0.0) for n, once in paths.items()))
            cpu_before, busy_before = cpu_seconds(pid), machine_busy()
            # both populations at the same time, so both see the same machine
            runs = [
                run_clients(sessions[n], args.clients, args.requests, once, args.stagger) for n, once in paths.items()
            ]
            results = dict(zip(paths, await asyncio.gather(*runs), strict=True))
            cpu = tuple(after - before for after, before in zip(cpu_seconds(pid), cpu_before, strict=True))
            busy = tuple(after - before for after, before in zip(machine_busy(), busy_before, strict=True))
        finally:
            for session in sessions.values():
                await session.close()
    figures = report(args, results, cpu)
    print(f"machine: {os.cpu_count()} cores, {busy[0] / busy[1]:.0%} busy during the timed run (all processes)")
    figures["machine_busy"] = busy[0] / busy[1]
    write_figures(args.json, "bench_server", args, figures)


def report(
    args: argparse.Namespace, results: dict[str, tuple[list, list]], cpu: tuple[float, float]
) -> dict[str, float]:
    """Print the figures; return them by name (seconds; ``added`` in ms)."""
    per_path = args.clients * args.requests
    print(
        f"{args.clients} concurrent streaming clients per path, both paths at once, {args.requests} requests each; "
        f"upstream ttft {args.ttft}s, tpot {args.tpot}s, proposer {args.proposer_tokens} + answer {args.tokens} tokens, "
        f"starts spread over {args.stagger}s; moa serve --loop {args.loop}"
    )
    figures = {}
    flat: dict[str, float] = {}
    for name, (samples, errors) in results.items():
        print(f"{name}: {len(samples)}/{per_path} completed, {len(errors)} errors")
        flat[f"{name}.completed"], flat[f"{name}.errors"] = len(samples), len(errors)
        for e in sorted(set(errors))[:5]:
            print(f"  error: {e}")
        for i, what in enumerate(("ttft", "total")):
            values = [s[i] for s in samples]
            figures[name, what] = {q: pct(values, q) if values else float("nan") for q in (50, 99)}
            f = figures[name, what]
            print(f"{name} {what}: p50 {f[50] * 1000:.1f} ms, p99 {f[99] * 1000:.1f} ms")
            flat[f"{name}.{what}.p50_s"], flat[f"{name}.{what}.p99_s"] = f[50], f[99]
    for what in ("ttft", "total"):
        added = {q: (figures["served", what][q] - figures["direct", what][q]) * 1000 for q in (50, 99)}
        print(f"added by moa serve, {what}: p50 {added[50]:+.1f} ms, p99 {added[99]:+.1f} ms (goal p99 <= 10 ms)")
        flat[f"added.{what}.p50_ms"], flat[f"added.{what}.p99_ms"] = added[50], added[99]
    served = len(results["served"][0]) or 1
    user, system = cpu
    print(
        f"moa serve CPU: {user:.2f} s user + {system:.2f} s system for {served} requests = "
        f"{(user + system) / served * 1000:.2f} ms a request"
    )
    flat.update({"server_cpu.user_s": user, "server_cpu.system_s": system})
    flat["server_cpu.ms_per_request"] = (user + system) / served * 1000
    return flat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=200)
    parser.add_argument("--requests", type=int, default=5, help="requests per client, back to back")
    parser.add_argument("--ttft", type=float, default=0.2, help="upstream seconds to the first token")
    parser.add_argument("--tpot", type=float, default=0.02, help="upstream seconds per further token")
    parser.add_argument("--tokens", type=int, default=64, help="tokens of the streamed answer")
    parser.add_argument("--proposer-tokens", type=int, default=16, help="tokens of the proposer's answer")
    parser.add_argument("--loop", choices=["auto", "uvloop", "asyncio"], default="auto", help="moa serve's event loop")
    parser.add_argument("--stagger", type=float, default=2.0,
                        help="each client starts after a random wait up to this (0: all at once, a burst)")  # fmt: skip
    add_json_option(parser)
    asyncio.run(bench(parser.parse_args()))


if __name__ == "__main__":
    main()
