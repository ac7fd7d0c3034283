"""A simulated-latency OpenAI-compatible endpoint for benchmarks.

Every call takes ``ttft_s`` before its first token and ``tpot_s`` per output token after that; it returns
``tokens`` words (fewer if ``max_tokens`` asks), ``n`` choices when asked, and streams when asked. With ``rps``
set it admits that many requests a second (a token bucket holding ``burst`` requests) and answers 429 with
Retry-After beyond it, like a hosted API. With ``straggler_share`` set, that share of calls (drawn from a random
generator seeded with ``seed``, in arrival order) takes ``straggler_factor`` times as long, first token and every
token after it: a provider's latency tail.

Run it in its own process so its work does not share the event loop being measured::

    python -m benchmarks.sim_endpoint --ttft 0.2 --tpot 0.01 --tokens 100 [--rps 50] [--stragglers 0.1] [--port 0]

prints ``listening on http://127.0.0.1:PORT/v1`` once ready; ``GET /stats`` returns the counts.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from aiohttp import web


@dataclass
class SimSettings:
    ttft_s: float = 0.2
    tpot_s: float = 0.01
    tokens: int = 100
    rps: float | None = None
    burst: int = 1
    straggler_share: float = 0.0
    straggler_factor: float = 5.0
    seed: int = 0


class _Bucket:
    def __init__(self, rps: float, burst: int) -> None:
        self.rate, self.capacity = rps, float(burst)
        self.level, self.stamp = float(burst), time.monotonic()

    def take(self) -> float | None:
        """None when admitted, else the seconds until a token is due."""
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.level >= 1.0:
            self.level -= 1.0
            return None
        return (1.0 - self.level) / self.rate


def build_app(settings: SimSettings) -> web.Application:
    stats = {"requests": 0, "admitted": 0, "rejected": 0, "stragglers": 0, "first": None, "last": None}
    bucket = _Bucket(settings.rps, settings.burst) if settings.rps else None
    draw = random.Random(settings.seed)

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        stats["requests"] += 1
        if bucket is not None and (wait := bucket.take()) is not None:
            stats["rejected"] += 1
            error = {"error": {"message": "rate limited", "type": "rate_limit", "param": None, "code": None}}
            return web.json_response(error, status=429, headers={"Retry-After": f"{wait:.3f}"})
        now = time.monotonic()
        stats["admitted"] += 1
        stats["first"] = stats["first"] or now
        stats["last"] = now
        slow = settings.straggler_share > 0 and draw.random() < settings.straggler_share
        stats["stragglers"] += slow
        factor = settings.straggler_factor if slow else 1.0
        ttft_s, tpot_s = settings.ttft_s * factor, settings.tpot_s * factor
        count = min(settings.tokens, body.get("max_tokens") or settings.tokens)
        words = [f"tok{i}" for i in range(count)]
        n = int(body.get("n", 1))
        usage = {"prompt_tokens": sum(len(m["content"]) for m in body["messages"]) // 4, "completion_tokens": count * n}
        usage["total_tokens"] = usage["prompt_tokens"] + usage["completion_tokens"]
        await asyncio.sleep(ttft_s)
        if body.get("stream"):
            resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
            await resp.prepare(request)
            for i, word in enumerate(words):
                chunk = {"choices": [{"index": 0, "delta": {"content": word if i == 0 else " " + word}}]}
                await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
                await asyncio.sleep(tpot_s)
            end = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}], "usage": usage}
            await resp.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
            return resp
        await asyncio.sleep(tpot_s * count)
        text = " ".join(words)
        choices = [
            {"index": i, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"} for i in range(n)
        ]
        return web.json_response(
            {"object": "chat.completion", "model": body.get("model"), "choices": choices, "usage": usage}
        )

    async def get_stats(request: web.Request) -> web.Response:
        return web.json_response(stats)

    app = web.Application(client_max_size=64 * 1024 * 1024)
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/stats", get_stats)
    return app


async def serve_app(app: web.Application, port: int) -> None:
    """Serve ``app`` on 127.0.0.1 until killed; prints ``listening on URL`` once ready (what ``launch_child`` reads)."""
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", port, backlog=4096)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    print(f"listening on http://127.0.0.1:{port}/v1", flush=True)
    await asyncio.Event().wait()


@contextmanager
def launch(settings: SimSettings) -> Iterator[str]:
    """Run the endpoint in a child process; yields its base URL."""
    args = [sys.executable, "-m", "benchmarks.sim_endpoint", "--ttft", str(settings.ttft_s), "--tpot",
            str(settings.tpot_s), "--tokens", str(settings.tokens), "--burst", str(settings.burst)]  # fmt: skip
    if settings.rps:
        args += ["--rps", str(settings.rps)]
    if settings.straggler_share:
        args += ["--stragglers", str(settings.straggler_share), "--straggler-factor", str(settings.straggler_factor),
                 "--seed", str(settings.seed)]  # fmt: skip
    with launch_child(args) as url:
        yield url


@contextmanager
def launch_child(args: list[str]) -> Iterator[str]:
    """Run an endpoint module (``serve_app`` in a child process, started with ``args``); yields its base URL."""
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if not line.startswith("listening on "):
            raise RuntimeError(f"{args[2]} did not start: {line!r}")
        yield line.removeprefix("listening on ").strip()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ttft", type=float, default=0.2, help="seconds to the first token")
    parser.add_argument("--tpot", type=float, default=0.01, help="seconds per further token")
    parser.add_argument("--tokens", type=int, default=100, help="tokens per answer")
    parser.add_argument("--rps", type=float, default=None, help="admit this many requests a second (429 beyond)")
    parser.add_argument("--burst", type=int, default=1, help="requests the rate limiter lets through back to back")
    parser.add_argument("--stragglers", type=float, default=0.0, help="share of calls that are slow (0.1: 10%%)")
    parser.add_argument("--straggler-factor", type=float, default=5.0, help="how many times slower a straggler is")
    parser.add_argument("--seed", type=int, default=0, help="seeds which calls are stragglers")
    parser.add_argument("--port", type=int, default=0)
    a = parser.parse_args()
    settings = SimSettings(a.ttft, a.tpot, a.tokens, a.rps, a.burst, a.stragglers, a.straggler_factor, a.seed)
    try:
        asyncio.run(serve_app(build_app(settings), a.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
