"""The Responses API against chat completions, and the response store.

Part 1: the same ensemble (2 layers of ``--width`` proposers and an aggregator on the simulated endpoint) through
``POST /v1/chat/completions`` and ``POST /v1/responses``, both streamed, one request at a time, alternating, so
both see the same machine: time to the first token of the answer at the client, p50 and p99 side by side.
Goal: responses within +2 ms (p50) of chat completions.

Part 2: the store on its own (``moa.server.responses.store``), SQLite (a file in a temporary folder) and Redis
(a ``redis-server`` started on a free port): a write, a read, and the load of a 100-turn chain (the record
``previous_response_id`` reads: its resolved history of 200 items). Goal: chain load p99 <= 5 ms.

    python -m benchmarks.bench_responses [--requests 100] [--store-ops 500] [--turns 100] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import aiohttp
import yaml

from benchmarks.bench_server import new_session, pct
from benchmarks.figures import add_json_option, write_figures
from benchmarks.sim_endpoint import SimSettings, launch
from moa.server.responses.store import ResponseStore, StoredResponse, open_store

PROMPT = "Explain how rainbows form, in detail."


def moa_config(sim_url: str, width: int) -> dict[str, object]:
    agents = [{"backend": "sim", "model": f"proposer-{i}"} for i in range(width)]
    return {
        "name": "bench",
        "backends": {"sim": {"type": "openai", "base_url": sim_url, "retry": {"max_retries": 0}}},
        "layers": [{"agents": agents}, {"agents": agents}],
        "aggregator": {"backend": "sim", "model": "aggregator"},
    }


@contextmanager
def moa_serve(config: dict[str, object], directory: Path) -> Iterator[str]:
    """``moa serve`` in its own process, its responses stored in ``directory``; yields its base URL."""
    path = directory / "bench.yaml"
    path.write_text(yaml.safe_dump(config))
    store = f"sqlite:///{directory / 'responses.sqlite3'}"
    command = [sys.executable, "-m", "moa.cli", "serve", "-c", str(path), "--port", "0", "--log-level", "warning"]
    command += ["--response-store", store]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout else ""
        if "listening on " not in line:
            raise RuntimeError(f"moa serve did not start: {line!r}")
        yield line.split("listening on ", 1)[1].strip()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


async def first_token(session: aiohttp.ClientSession, url: str, api: str) -> float:
    """Seconds from a streamed request to the first token of its answer at the client."""
    if api == "chat":
        path, body = "chat/completions", {"model": "bench", "messages": [{"role": "user", "content": PROMPT}]}
        marker = b'"content": "'
    else:
        path, body = "responses", {"model": "bench", "input": PROMPT}
        marker = b'"type": "response.output_text.delta"'
    started = time.perf_counter()
    seen: float | None = None
    async with session.post(f"{url}/{path}", json={**body, "stream": True}) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
        async for line in resp.content:
            if seen is None and marker in line and b'"content": ""' not in line:
                seen = time.perf_counter() - started
    if seen is None:
        raise RuntimeError(f"the {api} stream ended without a token")
    return seen


async def bench_apis(args: argparse.Namespace, url: str) -> dict[str, float]:
    times: dict[str, list[float]] = {"chat": [], "responses": []}
    async with new_session() as session:
        for api in times:  # warm: connections, the server's first request of each kind
            await first_token(session, url, api)
        for _ in range(args.requests):
            for api, seen in times.items():
                seen.append(await first_token(session, url, api))
    figures: dict[str, float] = {}
    for api, seen in times.items():
        figures[f"{api}.ttft_p50_ms"] = 1000 * pct(seen, 50)
        figures[f"{api}.ttft_p99_ms"] = 1000 * pct(seen, 99)
    figures["responses_minus_chat.ttft_p50_ms"] = figures["responses.ttft_p50_ms"] - figures["chat.ttft_p50_ms"]
    return figures


def chain_record(rid: str, turns: int) -> StoredResponse:
    """A record as a ``turns``-turn conversation leaves it: a user and an assistant item a turn."""
    history = []
    for t in range(turns):
        question = {"type": "input_text", "text": f"question {t}: " + "why is it so? " * 8}
        answer = {"type": "output_text", "text": "because " * 40, "annotations": []}
        history.append({"id": f"msg_u{t}", "type": "message", "role": "user", "content": [question]})
        history.append({"id": f"msg_a{t}", "type": "message", "role": "assistant", "content": [answer]})
    response = {"id": rid, "object": "response", "status": "completed", "output": history[-1:]}
    return StoredResponse(rid, "tenant", time.time(), response, history[-2:-1], history)


async def timed(op: Callable[[int], Awaitable[object]], count: int) -> list[float]:
    seconds = []
    for i in range(count):
        started = time.perf_counter()
        await op(i)
        seconds.append(time.perf_counter() - started)
    return seconds


async def bench_store(name: str, store: ResponseStore, args: argparse.Namespace) -> dict[str, float]:
    await store.open()
    try:
        one = chain_record("resp_one", 1)
        await timed(lambda i: store.put(one), 20)  # warm
        writes = await timed(lambda i: store.put(chain_record(f"resp_w{i}", 1)), args.store_ops)
        reads = await timed(lambda i: store.get("tenant", f"resp_w{i}"), args.store_ops)
        await store.put(chain_record("resp_chain", args.turns))
        loads = await timed(lambda i: store.get("tenant", "resp_chain"), args.store_ops)
    finally:
        await store.aclose()
    figures = {}
    for what, seconds in (("write", writes), ("read", reads), ("chain_load", loads)):
        figures[f"{name}.{what}_p50_ms"] = 1000 * pct(seconds, 50)
        figures[f"{name}.{what}_p99_ms"] = 1000 * pct(seconds, 99)
    return figures


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def redis_server(directory: Path) -> Iterator[str | None]:
    binary = shutil.which("redis-server")
    if binary is None:
        yield None
        return
    port = free_port()
    args = [binary, "--bind", "127.0.0.1", "--port", str(port), "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen([*args, "--dir", str(directory)], stdout=subprocess.DEVNULL)
    try:
        time.sleep(0.5)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.kill()
        proc.wait()


def report(figures: dict[str, float]) -> None:
    print("time to the first token, the same ensemble, streamed (goal: responses within +2 ms p50):")
    for api in ("chat", "responses"):
        print(f"  {api:<10} p50 {figures[f'{api}.ttft_p50_ms']:8.2f} ms   p99 {figures[f'{api}.ttft_p99_ms']:8.2f} ms")
    print(f"  responses - chat, p50: {figures['responses_minus_chat.ttft_p50_ms']:+.2f} ms")
    print("response store (goal: 100-turn chain load p99 <= 5 ms):")
    for name in ("sqlite", "redis"):
        if f"{name}.write_p50_ms" not in figures:
            print(f"  {name}: skipped (redis-server is not on PATH)")
            continue
        cells = [
            f"{what} p50 {figures[f'{name}.{what}_p50_ms']:6.3f} / p99 {figures[f'{name}.{what}_p99_ms']:6.3f} ms"
            for what in ("write", "read", "chain_load")
        ]
        print(f"  {name:<7}" + "   ".join(cells))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=100, help="streamed requests through each API")
    parser.add_argument("--width", type=int, default=3, help="proposers per layer (two layers)")
    parser.add_argument("--ttft", type=float, default=0.05, help="upstream seconds to the first token")
    parser.add_argument("--tpot", type=float, default=0.001, help="upstream seconds per further token")
    parser.add_argument("--tokens", type=int, default=20, help="tokens per upstream answer")
    parser.add_argument("--store-ops", type=int, default=500, help="writes, reads and chain loads per store")
    parser.add_argument("--turns", type=int, default=100, help="turns of the chain loaded")
    add_json_option(parser)
    args = parser.parse_args()
    figures: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        directory = Path(tmp)
        with launch(SimSettings(ttft_s=args.ttft, tpot_s=args.tpot, tokens=args.tokens)) as sim_url:
            with moa_serve(moa_config(sim_url, args.width), directory) as url:
                figures.update(asyncio.run(bench_apis(args, url)))
        sqlite = open_store(f"sqlite:///{directory / 'bench.sqlite3'}", ttl_s=3600)
        figures.update(asyncio.run(bench_store("sqlite", sqlite, args)))
        with redis_server(directory) as redis_url:
            if redis_url is not None:
                figures.update(asyncio.run(bench_store("redis", open_store(redis_url, ttl_s=3600), args)))
    report(figures)
    write_figures(args.json, "bench_responses", args, figures)


if __name__ == "__main__":
    main()
