"""``moa serve`` against an upstream that misbehaves in every way the hardening issue lists.

300 requests (20 at a time, half streamed) go through ``moa serve`` to an ensemble of 4 proposers and an
aggregator on ``benchmarks.fault_endpoint``, where 20% of calls get a fault: HTTP 500 and 429 (Retry-After
0.05, 0 and negative), dropped connections, hangs, each wrong-shape body (whole and streamed), streams cut off
midway, and errors that quote the caller's API key and secret header back. Prints:

    succeeded         200 with an answer (whole: choices[0].message.content; streamed: tokens then [DONE])
    failed cleanly    an OpenAI error body with a 4xx/5xx status other than 500 (or, once a stream began, an
                      error event followed by [DONE])
    500s, hangs       statuses 500, and requests still unanswered 5 s past the ensemble's deadline
    leaked secrets    responses (bodies and headers) and server output holding the key or the header value
    should have       requests whose calls included >= min_proposals good proposer calls and a good aggregator
    succeeded         call, by the endpoint's own record; each must have succeeded

Goal: 0 x 500, 0 hangs, 0 leaks, and every request that should have succeeded did.

    python -m benchmarks.bench_faults [--requests 300] [--concurrency 20] [--fault-rate 0.2] [--seed 1] [--json PATH]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import yaml

from benchmarks import fault_endpoint
from benchmarks.figures import add_json_option, write_figures

API_KEY = "sk-bench-KEY-5c1e7a90d2"
HEADER_SECRET = "azure-SECRET-91f0e2b7"
PROPOSERS = ["p1", "p2", "p3", "p4"]
MIN_PROPOSALS = 2
DEADLINE_S = 20.0


def ensemble_config(url: str) -> dict:
    return {
        "name": "faulty",
        "backends": {
            "up": {
                "type": "openai", "base_url": url, "api_key_env": "BENCH_API_KEY",
                "headers": {"api-key": "${BENCH_HEADER_SECRET}"},
                "retry": {"max_retries": 3, "initial_backoff_s": 0.05, "max_backoff_s": 0.4},
                "timeout_s": 1.0,
            }
        },
        "layers": [{"agents": [{"backend": "up", "model": m, "name": m} for m in PROPOSERS]}],
        "aggregator": {"backend": "up", "model": "agg"},
        "min_proposals": MIN_PROPOSALS,
        "deadline_s": DEADLINE_S,
    }  # fmt: skip


@contextmanager
def moa_serve(config: dict, log: Path) -> Iterator[str]:
    """``moa serve`` in its own process, its output into ``log``; yields its base URL."""
    env = {**os.environ, "BENCH_API_KEY": API_KEY, "BENCH_HEADER_SECRET": HEADER_SECRET}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "faulty.yaml"
        path.write_text(yaml.safe_dump(config))
        command = [sys.executable, "-m", "moa.cli", "serve", "-c", str(path), "--port", "0", "--max-queue", "1000"]
        with open(log, "w") as err:
            proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=err, text=True, env=env)
            try:
                line = proc.stdout.readline() if proc.stdout else ""
                if "listening on " not in line:
                    raise RuntimeError(f"moa serve did not start: {line!r}")
                yield line.split("listening on ", 1)[1].strip()
            finally:
                proc.terminate()
                out, _ = proc.communicate(timeout=30)
                err.write(line + (out or ""))


@dataclass
class Outcome:
    index: int
    stream: bool
    kind: str  # succeeded | failed cleanly | 500 | hang | unclean
    status: int
    detail: str
    raw: bytes


def _clean_error(data: object) -> bool:
    if not isinstance(data, dict) or not isinstance(data.get("error"), dict):
        return False
    return all(k in data["error"] for k in ("message", "type", "param", "code"))


async def one_request(session: aiohttp.ClientSession, url: str, index: int, stream: bool) -> Outcome:
    body = {"model": "faulty", "messages": [{"role": "user", "content": f"[req {index}] Name a colour."}],
            "stream": stream}  # fmt: skip
    timeout = aiohttp.ClientTimeout(total=DEADLINE_S + 5)
    try:
        async with session.post(f"{url}/chat/completions", json=body, timeout=timeout) as resp:
            raw = await resp.read()
            head = "\n".join(f"{k}: {v}" for k, v in resp.headers.items()).encode()
            status = resp.status
    except TimeoutError:
        return Outcome(index, stream, "hang", 0, "no answer", b"")
    except aiohttp.ClientError as e:
        return Outcome(index, stream, "unclean", 0, f"{type(e).__name__}", b"")
    everything = head + b"\n" + raw
    if status == 500:
        return Outcome(index, stream, "500", status, raw[:200].decode(errors="replace"), everything)
    if status != 200:
        try:
            clean = _clean_error(json.loads(raw))
        except ValueError:
            clean = False
        detail = json.loads(raw)["error"].get("code") if clean else raw[:200].decode(errors="replace")
        return Outcome(index, stream, "failed cleanly" if clean else "unclean", status, str(detail), everything)
    if not stream:
        data = json.loads(raw)
        ok = bool(data["choices"][0]["message"]["content"])
        return Outcome(index, stream, "succeeded" if ok else "unclean", status, "", everything)
    events = [line[6:] for line in raw.decode().split("\n") if line.startswith("data: ")]
    if not events or events[-1] != "[DONE]":
        return Outcome(index, stream, "unclean", status, "stream without [DONE]", everything)
    chunks = [json.loads(e) for e in events[:-1]]
    errors = [c for c in chunks if "error" in c]
    if errors:
        kind = "failed cleanly" if all(_clean_error(c) for c in errors) else "unclean"
        return Outcome(index, stream, kind, status, str(errors[0]["error"].get("code")), everything)
    pieces = [c["choices"][0]["delta"].get("content") or "" for c in chunks if c.get("choices")]
    if not all(isinstance(p, str) for p in pieces):
        return Outcome(index, stream, "unclean", status, "a non-text delta relayed", everything)
    return Outcome(index, stream, "succeeded" if "".join(pieces) else "unclean", status, "", everything)


def should_succeed(calls: list[dict]) -> bool:
    """Enough good proposer calls and a good aggregator call, by the endpoint's record of this request."""
    good_proposers = {c["model"] for c in calls if c["good"] and c["model"] in PROPOSERS}
    return len(good_proposers) >= MIN_PROPOSALS and any(c["good"] and c["model"] == "agg" for c in calls)


async def run(args: argparse.Namespace) -> int:
    log = Path(tempfile.mkdtemp()) / "moa-serve.log"
    with fault_endpoint.launch(args.fault_rate, args.seed, 0.02, "api-key") as upstream:
        with moa_serve(ensemble_config(upstream), log) as url:
            gate = asyncio.Semaphore(args.concurrency)
            async with aiohttp.ClientSession() as session:

                async def bounded(i: int) -> Outcome:
                    async with gate:
                        return await one_request(session, url, i, stream=i % 2 == 1)

                started = time.monotonic()
                outcomes = await asyncio.gather(*(bounded(i) for i in range(args.requests)))
                elapsed = time.monotonic() - started
                async with session.get(upstream.removesuffix("/v1") + "/stats") as resp:
                    calls = await resp.json()
    server_output = log.read_text()
    secrets = (API_KEY, HEADER_SECRET)
    leaks = sum(any(s.encode() in o.raw for s in secrets) for o in outcomes)
    log_leaks = sum(server_output.count(s) for s in secrets)
    kinds = Counter(o.kind for o in outcomes)
    faults = Counter(c["fault"] for request in calls.values() for c in request if c["fault"])
    expected = [o for o in outcomes if should_succeed(calls.get(str(o.index), []))]
    missed = [o for o in expected if o.kind != "succeeded"]
    total_calls = sum(len(v) for v in calls.values())
    print(f"requests: {args.requests} ({args.concurrency} at a time, half streamed) in {elapsed:.1f} s")
    print(f"upstream calls: {total_calls}, faults injected: {sum(faults.values())} ({dict(sorted(faults.items()))})")
    print(f"succeeded: {kinds['succeeded']}")
    failed = Counter(f"{o.status} {o.detail}" for o in outcomes if o.kind == "failed cleanly")
    print(f"failed cleanly: {kinds['failed cleanly']} {dict(failed)}")
    print(f"500s: {kinds['500']}")
    print(f"hangs past the deadline: {kinds['hang']}")
    print(f"unclean (no OpenAI body, broken stream): {kinds['unclean']}")
    print(f"leaked secrets: {leaks} responses, {log_leaks} in the server's output")
    print(f"should have succeeded: {len(expected)}, of which failed: {len(missed)}")
    for o in missed[:10]:
        print(f"  request {o.index} ({'stream' if o.stream else 'whole'}): {o.kind} {o.status} {o.detail}")
    ok = not (kinds["500"] or kinds["hang"] or kinds["unclean"] or leaks or log_leaks or missed)
    print(
        f"goal (0 x 500, 0 hangs, 0 leaks, every request with enough good proposals succeeds): {'met' if ok else 'NOT met'}"
    )
    figures = {
        "requests": args.requests,
        "elapsed_s": elapsed,
        "upstream_calls": total_calls,
        "faults_injected": sum(faults.values()),
        "faults": dict(sorted(faults.items())),
        "succeeded": kinds["succeeded"],
        "failed_cleanly": kinds["failed cleanly"],
        "failed_cleanly_by_status": dict(failed),
        "status_500": kinds["500"],
        "hangs": kinds["hang"],
        "unclean": kinds["unclean"],
        "responses_leaking_a_secret": leaks,
        "secrets_in_server_output": log_leaks,
        "should_have_succeeded": len(expected),
        "should_have_succeeded_but_failed": len(missed),
        "goal_met": ok,
    }
    write_figures(args.json, "bench_faults", args, figures)
    return 0 if ok else 1


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300)
    parser.add_argument("--concurrency", type=int, default=20)
    parser.add_argument("--fault-rate", type=float, default=0.2)
    parser.add_argument("--seed", type=int, default=1)
    add_json_option(parser)
    raise SystemExit(asyncio.run(run(parser.parse_args())))


if __name__ == "__main__":
    main()
