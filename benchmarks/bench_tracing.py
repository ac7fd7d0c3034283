"""What OpenTelemetry tracing adds to a request through ``moa serve``: a 3-layer MoA (3 proposers a layer, then a
streamed aggregator: 10 upstream calls, 15 spans a request) on the simulated endpoint, through two ``moa serve``
processes side by side: one traced (spans exported over OTLP/HTTP to a local receiver,
``tests/support/otlp_receiver.py``, in its own process), one not (no ``OTEL_*`` configuration: no span is made).
With ``--before DIR`` a third runs from another checkout (``git archive <commit>``: the code before tracing), to
show what the untraced path costs over it. The servers are driven in turn, round after round (the same clients, the
same load, the order rotating), so the machine's other work falls on each. Prints p50/p99 of the whole request's
latency and TTFT for each, the differences, each server's CPU per request and the spans the receiver got. Goal:
<= 2% added at p50.

    python -m benchmarks.bench_tracing [--rounds 6] [--clients 8] [--requests 5] [--before DIR] [--json PATH]

``--in-process N`` measures instead the CPU the SDK's spans cost in one process, without any export: N requests of
the same ensemble through ``moa.Ensemble`` on an endpoint that answers at once, untraced and then traced into
OpenTelemetry's in-memory exporter, CPU time a request for each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import aiohttp
import yaml

from benchmarks.bench_server import cpu_seconds, new_session, pct
from benchmarks.figures import add_json_option, write_figures
from benchmarks.sim_endpoint import SimSettings, launch, launch_child

PROMPT = [{"role": "user", "content": "Explain how rainbows form, in detail."}]
ROOT = Path(__file__).resolve().parents[1]


def ensemble_config(sim_url: str, proposer_tokens: int) -> dict:
    agents = [{"backend": "sim", "model": f"proposer-{i}", "max_tokens": proposer_tokens} for i in range(3)]
    return {
        "name": "bench",
        "backends": {"sim": {"type": "openai", "base_url": sim_url, "retry": {"max_retries": 0}}},
        "layers": [{"agents": agents} for _ in range(3)],
        "aggregator": {"backend": "sim", "model": "aggregator"},
    }


@contextmanager
def moa_serve(config: dict, env: dict[str, str], tree: Path = ROOT) -> Iterator[tuple[str, int]]:
    """``moa serve`` of the checkout ``tree`` in its own process with ``env`` over an environment without
    ``OTEL_*``; its URL and pid."""
    clean = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    clean["PYTHONPATH"] = str(tree)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.yaml"
        path.write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "moa.cli", "serve", "-c", str(path), "--port", "0", "--max-queue", "100000"]
        # its access log would drown the figures: a failed request is counted by the client
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env={**clean, **env}, cwd=tree
        )
        try:
            line = proc.stdout.readline() if proc.stdout else ""
            if "listening on " not in line:
                raise RuntimeError(f"moa serve did not start: {line!r}")
            yield line.split("listening on ", 1)[1].strip(), proc.pid
        finally:
            proc.terminate()
            proc.wait(timeout=30)


async def once(session: aiohttp.ClientSession, url: str) -> tuple[float, float]:
    """One streamed request to its end: (TTFT, total) in seconds."""
    started = time.perf_counter()
    first = None
    body = {"model": "bench", "messages": PROMPT, "stream": True}
    async with session.post(f"{url}/chat/completions", json=body) as resp:
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {(await resp.text())[:200]}")
        async for line in resp.content:
            if (
                first is None
                and line.startswith(b"data: ")
                and b'"content": "' in line
                and b'"content": ""' not in line
            ):
                first = time.perf_counter() - started
            elif line == b"data: [DONE]\n":
                break
    if first is None:
        raise RuntimeError("the stream ended without a token")
    return first, time.perf_counter() - started


async def one_round(
    session: aiohttp.ClientSession, url: str, clients: int, requests: int, errors: list[str]
) -> list[tuple[float, float]]:
    """``clients`` at once, ``requests`` each back to back: (TTFT, total) of each success; failures in ``errors``."""
    samples: list[tuple[float, float]] = []

    async def client() -> None:
        for _ in range(requests):
            try:
                samples.append(await once(session, url))
            except Exception as e:  # counted and reported, never hidden
                errors.append(f"{type(e).__name__}: {e}")

    await asyncio.gather(*(client() for _ in range(clients)))
    return samples


async def spans_received(session: aiohttp.ClientSession, receiver_url: str) -> int:
    async with session.get(f"{receiver_url}/spans") as resp:
        return len(await resp.json())


async def bench(args: argparse.Namespace) -> dict[str, float]:
    settings = SimSettings(ttft_s=args.ttft, tpot_s=args.tpot, tokens=args.tokens)
    receiver_args = [sys.executable, "-m", "tests.support.otlp_receiver"]
    with ExitStack() as stack:
        sim_url = stack.enter_context(launch(settings))
        receiver_url = stack.enter_context(launch_child([*receiver_args, "--port", "0"]))
        config = ensemble_config(sim_url, args.proposer_tokens)
        traced_env = {"OTEL_EXPORTER_OTLP_ENDPOINT": receiver_url, "OTEL_SERVICE_NAME": "moa-bench"}
        servers = {
            "off": stack.enter_context(moa_serve(config, {})),
            "traced": stack.enter_context(moa_serve(config, traced_env)),
        }
        if args.before is not None:
            servers["before"] = stack.enter_context(moa_serve(config, {}, args.before.resolve()))
        sides = list(servers)
        samples: dict[str, list[tuple[float, float]]] = {side: [] for side in sides}
        cpu = {side: 0.0 for side in sides}
        errors: dict[str, list[str]] = {side: [] for side in sides}
        async with new_session() as session:
            for side in sides:  # warm up each: connections, first-call paths
                await one_round(session, servers[side][0], args.clients, 1, errors[side])
            for r in range(args.rounds):
                for side in sides[r % len(sides) :] + sides[: r % len(sides)]:
                    url, pid = servers[side]
                    before = sum(cpu_seconds(pid))
                    samples[side] += await one_round(session, url, args.clients, args.requests, errors[side])
                    cpu[side] += sum(cpu_seconds(pid)) - before
            await asyncio.sleep(6)  # the batch processor exports every 5 s
            spans = await spans_received(session, receiver_url)
    return report(args, samples, cpu, spans, errors)


async def in_process(args: argparse.Namespace) -> dict[str, float]:
    """CPU a request in this process, untraced and traced into the in-memory exporter (no export)."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from moa import Ensemble, telemetry

    flat: dict[str, float] = {}
    with launch(SimSettings(ttft_s=0.0, tpot_s=0.0, tokens=args.tokens)) as sim_url:
        config = ensemble_config(sim_url, args.proposer_tokens)
        for side in ("off", "traced", "off", "traced"):  # twice each, interleaved
            exporter = InMemorySpanExporter()
            provider = TracerProvider()
            provider.add_span_processor(BatchSpanProcessor(exporter))
            telemetry.configure(provider if side == "traced" else None)
            async with Ensemble.from_config(config) as ens:
                for _ in range(10):  # warm up
                    await ens.acomplete(PROMPT)
                started = time.process_time()
                for _ in range(args.in_process // 8):
                    await asyncio.gather(*(ens.acomplete(PROMPT) for _ in range(8)))
                per_request = (time.process_time() - started) / (args.in_process // 8 * 8) * 1000
            provider.shutdown()
            print(
                f"{side:>6}: {per_request:.2f} ms CPU a request in process ({len(exporter.get_finished_spans())} spans)"
            )
            flat[f"{side}.cpu_ms_per_request"] = min(per_request, flat.get(f"{side}.cpu_ms_per_request", 1e9))
    telemetry.configure(None)
    added = flat["traced.cpu_ms_per_request"] - flat["off.cpu_ms_per_request"]
    print(
        f"added by the SDK's spans (the better of two runs each): {added:.2f} ms CPU a request, {added / 15:.3f} ms a span"
    )
    flat["added.cpu_ms_per_request"] = added
    return flat


def report(
    args: argparse.Namespace,
    samples: dict[str, list[tuple[float, float]]],
    cpu: dict[str, float],
    spans: int,
    errors: dict[str, list[str]],
) -> dict[str, float]:
    print(
        f"3-layer MoA (3 + 3 + 3 proposers, streamed aggregator) through moa serve, {args.clients} clients, "
        f"{args.rounds} rotating rounds of {args.requests} requests a client; upstream ttft {args.ttft}s, tpot "
        f"{args.tpot}s, {args.proposer_tokens} proposer / {args.tokens} answer tokens"
    )
    flat: dict[str, float] = {}
    figures: dict[tuple[str, str], dict[int, float]] = {}
    for side in samples:
        done = samples[side]
        for i, what in enumerate(("ttft", "total")):
            values = [s[i] for s in done]
            figures[side, what] = {q: pct(values, q) for q in (50, 99)}
            f = figures[side, what]
            flat[f"{side}.{what}.p50_s"], flat[f"{side}.{what}.p99_s"] = f[50], f[99]
        per_request = cpu[side] / max(len(done), 1) * 1000
        flat[f"{side}.requests"], flat[f"{side}.cpu_ms_per_request"] = len(done), per_request
        flat[f"{side}.errors"] = len(errors[side])
        for e in sorted(set(errors[side]))[:5]:
            print(f"{side} error: {e}")
        total, ttft = figures[side, "total"], figures[side, "ttft"]
        print(
            f"{side:>6}: {len(done)} requests, {len(errors[side])} errors; total p50 {total[50] * 1000:.1f} ms, p99 {total[99] * 1000:.1f} ms; "
            f"TTFT p50 {ttft[50] * 1000:.1f} ms, p99 {ttft[99] * 1000:.1f} ms; server CPU {per_request:.2f} ms a request"
        )
    pairs = [("traced", "off", "added by tracing", "added")]
    if "before" in samples:
        pairs.append(("off", "before", "added untraced, over the code before tracing", "added_off"))
    for side, base, title, key in pairs:
        for what in ("total", "ttft"):
            off, on = figures[base, what], figures[side, what]
            added = {q: (on[q] - off[q]) * 1000 for q in (50, 99)}
            share = {q: (on[q] / off[q] - 1) * 100 for q in (50, 99)}
            print(
                f"{title}, {what}: p50 {added[50]:+.1f} ms ({share[50]:+.2f}%), "
                f"p99 {added[99]:+.1f} ms ({share[99]:+.2f}%)" + (" (goal p50 <= 2%)" if what == "total" else "")
            )
            for q in (50, 99):
                flat[f"{key}.{what}.p{q}_ms"], flat[f"{key}.{what}.p{q}_percent"] = added[q], share[q]
    expected = 15 * (len(samples["traced"]) + len(errors["traced"]) + args.clients)
    print(f"spans received over OTLP/HTTP: {spans} (expected {expected}: 15 a request, warm-up included)")
    flat["spans_received"], flat["spans_expected"] = spans, expected
    return flat


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=6, help="rounds (each server once a round, the order rotating)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients")
    parser.add_argument("--requests", type=int, default=5, help="requests per client a round, back to back")
    parser.add_argument("--ttft", type=float, default=0.05, help="upstream seconds to the first token")
    parser.add_argument("--tpot", type=float, default=0.002, help="upstream seconds per further token")
    parser.add_argument("--tokens", type=int, default=64, help="tokens of the streamed answer")
    parser.add_argument("--proposer-tokens", type=int, default=32, help="tokens of each proposer's answer")
    parser.add_argument("--before", type=Path, metavar="DIR", help="also serve from this checkout (untraced)")
    parser.add_argument("--in-process", type=int, metavar="N", help="measure the spans' CPU in process instead")
    add_json_option(parser)
    args = parser.parse_args()
    figures = asyncio.run(in_process(args) if args.in_process else bench(args))
    write_figures(args.json, "bench_tracing", args, figures)


if __name__ == "__main__":
    main()
