"""An OpenAI-compatible endpoint that misbehaves on purpose, for ``benchmarks/bench_faults.py``.

A seeded share of calls (``--fault-rate``) gets one fault, drawn evenly from ``FAULTS``: error statuses (500,
429 with odd Retry-After values), a dropped connection, a hang, every wrong-shape body the hardening issue lists
(whole and streamed), a stream cut off midway, and errors that quote the caller's secret header back. The rest
answer normally after ``--ttft`` seconds.

Models named with a scenario prefix get no faults and behave as the issue's other cases need:

- ``dense-``: bills one token a character (CJK text), prompt and answer; the answer fills ``max_tokens``.
- ``nousage-``: streams without a usage chunk (whole answers still carry usage); it bills all the same.
- ``slow-``: streams 100 tokens 20 ms apart (a whole answer after 2 s), for drains.
- ``rapid-``: streams 400 tokens 2 ms apart, for clients that leave mid-stream (writes race the close).
- ``ok-``: answers normally, never a fault.

Each call is filed under the request tag found in its prompt (``[req N]``), with its model, whether it was
good and what it billed (``billed``: prompt and completion tokens, also for a stream the client left), so the
benchmark can tell which requests had enough good proposals to succeed and what each cost. Run in its own
process:

    python -m benchmarks.fault_endpoint --fault-rate 0.2 --seed 1 [--port 0]

prints ``listening on http://127.0.0.1:PORT/v1``; ``GET /stats`` returns the calls by tag.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import random
import re
import sys
from collections import defaultdict
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from aiohttp import web

from benchmarks.sim_endpoint import launch_child, serve_app

_TAG = re.compile(r"\[req (\d+)\]")

#: wrong-shape bodies of a whole answer (status 200)
WRONG_BODIES = [
    '{"choices":[{"message":null}]}',
    '{"choices":[{"message":"a string"}]}',
    '{"choices":[]}',
    '{"choices":[null]}',
    '{"choices":["x"]}',
    '{"choices":[{"message":{"role":"assistant","content":"hi"}}],"usage":"n/a"}',
    '{"choices":[{"message":{"role":"assistant","content":"hi"}}],"usage":{"prompt_tokens":1.5,"completion_tokens":2}}',
    '{"choices":[{"message":{"role":"assistant","content":42}}]}',
    "not json at all",
]
#: wrong-shape event streams (status 200, text/event-stream)
WRONG_STREAMS = [
    'data: ["x"]\n\n',
    'data: "hello"\n\n',
    'data: {"choices":[{"delta":"x"}]}\n\n',
    'data: {"choices":[{"delta":{"content":"a"}}],"usage":"x"}\n\n',
    'data: {"choices":[{"delta":{"content":7}}]}\n\n',
]
FAULTS = ["500", "429", "429-zero", "429-negative", "reset", "hang", "wrong-shape", "midstream-drop", "echo-secret"]
#: model name prefixes of the scenarios (no faults)
SCENARIOS = ("dense-", "nousage-", "slow-", "rapid-", "ok-")
#: the dense scenario's answer text: one token a character, as a CJK tokenizer counts it
DENSE_TEXT = "这是一个很长的回答" * 200
SLOW_TOKENS, SLOW_TPOT_S, SLOW_WHOLE_S = 100, 0.02, 2.0
RAPID_TOKENS, RAPID_TPOT_S = 400, 0.002


def build_app(fault_rate: float, seed: int, ttft_s: float, secret_header: str) -> web.Application:
    rng = random.Random(seed)
    calls: dict[str, list[dict[str, Any]]] = defaultdict(list)

    async def chat(request: web.Request) -> web.StreamResponse:
        body = await request.json()
        prompt = "\n".join(str(m.get("content")) for m in body.get("messages", []))
        found = _TAG.search(prompt)
        tag = found.group(1) if found else "?"
        stream = bool(body.get("stream"))
        model = str(body.get("model"))
        scenario = next((p for p in SCENARIOS if model.startswith(p)), None)
        if scenario is None:
            fault = rng.choice(FAULTS) if rng.random() < fault_rate else None
        else:
            fault = None
        # a cut-off stream is a fault of streamed answers only; a whole answer with that draw is served whole
        good = fault is None or (fault == "midstream-drop" and not stream)
        call: dict[str, Any] = {"model": body.get("model"), "fault": fault, "good": good}
        calls[tag].append(call)
        if fault == "hang":
            await asyncio.sleep(3600)
        if fault == "reset":
            assert request.transport is not None
            request.transport.close()
            return web.Response(status=500)
        if fault in ("500", "429", "429-zero", "429-negative"):
            status = 500 if fault == "500" else 429
            retry_after = {"429": "0.05", "429-zero": "0", "429-negative": "-3"}.get(fault)
            headers = {"Retry-After": retry_after} if retry_after else {}
            return web.json_response({"error": {"message": f"scripted {status}"}}, status=status, headers=headers)
        if fault == "echo-secret":
            secret = request.headers.get(secret_header, "")
            message = f"invalid {secret_header}: {secret}; authorization: {request.headers.get('Authorization', '')}"
            return web.json_response({"error": {"message": message}}, status=rng.choice([401, 500]))
        if fault == "wrong-shape":
            if stream:
                text = rng.choice(WRONG_STREAMS) + "data: [DONE]\n\n"
                return web.Response(body=text.encode(), headers={"Content-Type": "text/event-stream"})
            return web.Response(body=rng.choice(WRONG_BODIES).encode(), headers={"Content-Type": "application/json"})
        await asyncio.sleep(ttft_s)
        max_tokens = body.get("max_tokens") or body.get("max_completion_tokens")
        if scenario == "dense-":
            text = DENSE_TEXT[: int(max_tokens or 100)]
            words = list(text)  # a token a character
            prompt_tokens, completion_tokens = len(prompt), len(text)
        elif scenario in ("slow-", "rapid-"):
            count = SLOW_TOKENS if scenario == "slow-" else RAPID_TOKENS
            words = [f" t{i}" if i else "t0" for i in range(count)]
            text = "".join(words)
            prompt_tokens, completion_tokens = len(prompt) // 4, len(words)
        else:
            text = f"answer of {body.get('model')} for request {tag}"
            words = text.split(" ")
            words = [w if i == 0 else " " + w for i, w in enumerate(words)]
            prompt_tokens, completion_tokens = len(prompt) // 4, 6
        usage = {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                 "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip
        call["billed"] = {"prompt": prompt_tokens, "completion": completion_tokens}
        if not stream:
            if scenario == "slow-":
                await asyncio.sleep(SLOW_WHOLE_S)
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}
            n = int(body.get("n", 1))
            return web.json_response({"choices": [{**choice, "index": i} for i in range(n)], "usage": usage})
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        call["billed"] = {"prompt": prompt_tokens, "completion": 0}  # what was generated, should the client leave
        for i, word in enumerate(words):
            chunk = {"choices": [{"index": 0, "delta": {"content": word}}]}
            await resp.write(f"data: {json.dumps(chunk)}\n\n".encode())
            call["billed"]["completion"] = (i + 1) * completion_tokens // len(words)
            if scenario in ("slow-", "rapid-"):
                await asyncio.sleep(SLOW_TPOT_S if scenario == "slow-" else RAPID_TPOT_S)
            if fault == "midstream-drop" and i == 2:
                assert request.transport is not None
                request.transport.close()
                return resp
        end: dict[str, Any] = {"choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]}
        if scenario != "nousage-":
            end["usage"] = usage
        await resp.write(f"data: {json.dumps(end)}\n\ndata: [DONE]\n\n".encode())
        return resp

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(calls)

    app = web.Application()
    app.router.add_post("/v1/chat/completions", chat)
    app.router.add_get("/stats", stats)
    return app


@contextmanager
def launch(fault_rate: float, seed: int, ttft_s: float, secret_header: str) -> Iterator[str]:
    """Run the endpoint in a child process; yields its base URL."""
    args = [sys.executable, "-m", "benchmarks.fault_endpoint", "--fault-rate", str(fault_rate), "--seed", str(seed),
            "--ttft", str(ttft_s), "--secret-header", secret_header]  # fmt: skip
    with launch_child(args) as url:
        yield url


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fault-rate", type=float, default=0.2, help="share of calls that get a fault")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--ttft", type=float, default=0.02, help="seconds before a good answer")
    parser.add_argument("--secret-header", default="api-key", help="the header whose value echo faults quote")
    parser.add_argument("--port", type=int, default=0)
    a = parser.parse_args()
    try:
        asyncio.run(serve_app(build_app(a.fault_rate, a.seed, a.ttft, a.secret_header), a.port))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
