"""Replicas sharing one backend's limits on Redis: 2 and 4 processes against a limit of R, offered 2R together.

Each replica is its own process with moa's ``SharedLimits`` (the limiter ``moa serve`` uses with a store) in
front of an aiohttp client; the upstream is another process that records every request's start and answers
429 when the last second already holds R * 1.05 requests. Reports, per replica count:

- achieved rate / R over the run (goal >= 0.95) and the most requests the upstream saw in any one-second
  window / R (goal <= 1.05), and the 429s it sent;
- the limiter's added latency per call (time in ``slot()`` while offered 0.5R, so no call waits for the
  rate): p50 and p99 (goal p99 <= 2 ms on loopback).

Starts its own ``redis-server`` on a free port (``--store`` to use another)::

    python -m benchmarks.bench_replicas [--rate 100] [--seconds 5] [--replicas 2 4] [--store redis://...]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import multiprocessing as mp
import shutil
import socket
import subprocess
import tempfile
import time
import uuid
from bisect import bisect_left
from collections import deque
from typing import Any

import aiohttp
from aiohttp import web

from benchmarks.figures import add_json_option, write_figures
from moa.config import RateLimit
from moa.shared_limits import SharedLimits


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# ---- the upstream: records starts, 429 over R * 1.05 in the last second ------------------------------------


def _upstream(port: int, limit: float, ready: Any) -> None:
    starts: list[float] = []
    window: deque[float] = deque()
    rejected = 0

    async def chat(request: web.Request) -> web.Response:
        nonlocal rejected
        now = time.time()
        while window and window[0] <= now - 1.0:
            window.popleft()
        if len(window) >= limit * 1.05:
            rejected += 1
            return web.json_response({"error": {"message": "rate limited"}}, status=429)
        window.append(now)
        starts.append(now)
        return web.json_response({"choices": [{"index": 0, "message": {"role": "assistant", "content": "ok"}}]})

    async def stats(request: web.Request) -> web.Response:
        nonlocal rejected
        body = {"starts": list(starts), "rejected": rejected}
        starts.clear()
        window.clear()
        rejected = 0
        return web.json_response(body)

    async def serve() -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_get("/stats", stats)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        ready.set()
        await asyncio.Event().wait()

    asyncio.run(serve())


# ---- one replica: SharedLimits in front of a client, open loop at its share of the offer ---------------------


def _replica(store: str | None, prefix: str, limit: RateLimit, offered: float, seconds: float, url: str, start_at: float,
             out: Any) -> None:  # fmt: skip
    async def run() -> tuple[list[float], int]:
        limits = SharedLimits("bench", limit, prefix)
        await limits.start()
        waits: list[float] = []
        statuses = {"ok": 0}
        async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

            async def call() -> None:
                t0 = time.perf_counter()
                async with limits.slot(1):
                    waits.append(time.perf_counter() - t0)
                    async with http.post(url, json={"model": "m", "messages": []}) as resp:
                        await resp.read()
                        statuses["ok"] += resp.status == 200

            gc.collect()
            gc.freeze()  # a full collection mid-run would hold back granted calls, which then bunch up
            await asyncio.sleep(max(0.0, start_at - time.time()))
            begin, tasks = time.monotonic(), []
            while (i := len(tasks)) < offered * seconds:
                tasks.append(asyncio.ensure_future(call()))
                await asyncio.sleep(max(0.0, begin + (i + 1) / offered - time.monotonic()))
            await asyncio.sleep(0.2)
            for t in tasks:
                t.cancel()  # those still waiting for their place give it back
            await asyncio.gather(*tasks, return_exceptions=True)
        await limits.aclose()
        return waits, statuses["ok"]

    out.put(asyncio.run(run()))


def _phase(limit: RateLimit, replicas: int, offered: float, seconds: float, url: str) -> list[Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    prefix, start_at = f"bench:{uuid.uuid4().hex[:8]}", time.time() + 1.5
    procs = [
        ctx.Process(target=_replica, args=(limit.store, prefix, limit, offered / replicas, seconds, url, start_at, out))
        for _ in range(replicas)
    ]
    for p in procs:
        p.start()
    results = [out.get(timeout=seconds + 60) for _ in procs]
    for p in procs:
        p.join()
    return results


def _max_window(starts: list[float]) -> int:
    starts = sorted(starts)
    return max((bisect_left(starts, s + 1.0) - i for i, s in enumerate(starts)), default=0)


async def _stats(base: str) -> dict[str, Any]:
    async with aiohttp.ClientSession() as http, http.get(f"{base}/stats") as resp:
        return dict(await resp.json())


def _pct(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=100, help="the backend's limit R, requests a second")
    parser.add_argument("--seconds", type=float, default=5)
    parser.add_argument("--replicas", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--store", help="a running Redis (default: start redis-server on a free port)")
    add_json_option(parser)
    args = parser.parse_args()
    figures: dict[str, object] = {}

    redis_proc, tmp = None, tempfile.TemporaryDirectory()
    store = args.store
    if store is None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise SystemExit("redis-server is not on PATH: install it or pass --store redis://host:port/db")
        port = _free_port()
        redis_proc = subprocess.Popen(
            [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no", "--dir", tmp.name],
            stdout=subprocess.DEVNULL,
        )
        store = f"redis://127.0.0.1:{port}/0"
        time.sleep(0.5)
    ctx = mp.get_context("spawn")
    ready, up_port = ctx.Event(), _free_port()
    upstream = ctx.Process(target=_upstream, args=(up_port, args.rate, ready), daemon=True)
    upstream.start()
    ready.wait(30)
    base = f"http://127.0.0.1:{up_port}"
    try:
        print(f"limit R = {args.rate:g}/s, {args.seconds:g} s a run, store {store}")
        for n in args.replicas:
            asyncio.run(_stats(base))  # clears
            spaced = RateLimit(rps=args.rate, store=store)
            _phase(spaced, n, 2 * args.rate, args.seconds, f"{base}/v1/chat/completions")
            seen = asyncio.run(_stats(base))
            starts = seen["starts"]
            span = args.seconds
            achieved = sum(1 for s in starts if starts[0] <= s < starts[0] + span) / span if starts else 0.0
            # a burst of R: no call of the 0.5R run waits for its place, so the time in slot() is the limiter's own
            bursty = RateLimit(rps=args.rate, burst=max(1, int(args.rate)), store=store)
            results = _phase(bursty, n, args.rate / 2, args.seconds, f"{base}/v1/chat/completions")
            asyncio.run(_stats(base))
            waits = [w for r in results for w in r[0]]
            figures.update({
                f"{n}.achieved_over_r": achieved / args.rate, f"{n}.busiest_second_over_r": _max_window(starts) / args.rate,
                f"{n}.upstream_429s": seen["rejected"], f"{n}.limiter_p50_ms": _pct(waits, 0.5) * 1e3,
                f"{n}.limiter_p99_ms": _pct(waits, 0.99) * 1e3,
            })  # fmt: skip
            print(
                f"{n} replicas, offered 2R: achieved {achieved / args.rate:.3f} R, busiest second "
                f"{_max_window(starts) / args.rate:.3f} R, 429s {seen['rejected']}; limiter at 0.5R: "
                f"p50 {_pct(waits, 0.5) * 1e3:.2f} ms, p99 {_pct(waits, 0.99) * 1e3:.2f} ms"
            )
        write_figures(args.json, "bench_replicas", args, figures)
    finally:
        upstream.terminate()
        if redis_proc is not None:
            redis_proc.kill()
            redis_proc.wait()
        tmp.cleanup()


if __name__ == "__main__":
    main()
