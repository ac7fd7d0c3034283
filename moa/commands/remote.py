"""``moa run --server URL`` (or ``$MOA_SERVER``): the prompt goes to a running ``moa serve`` instead of an ensemble
built here, so no engine starts: the warm path.

The request is streamed with ``stream_options: {include_usage, include_progress}``, so the server's progress
chunks drive the same view as a local run and the answer's tokens print as they come. The ensemble is ``-c NAME``
when given, else the server's only one (or its ``default``). An API key, when the server wants one, comes from
``$MOA_SERVER_API_KEY``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import fields
from typing import Any

import aiohttp

from moa.commands.progress_view import ProgressView, print_calls, timeline
from moa.errors import BackendError, ConfigError, MoaError
from moa.progress import ProgressEvent
from moa.types import CallRecord

#: seconds to wait for the server to answer at all (its answer then streams for as long as it takes)
CONNECT_TIMEOUT_S = 10.0
_EVENT_FIELDS = frozenset(f.name for f in fields(ProgressEvent))


async def run_remote(args: argparse.Namespace, server: str) -> int:
    base = server.rstrip("/")
    if not base.startswith(("http://", "https://")):
        raise ConfigError(f"must be an http(s) URL, got {server!r}", "--server")
    if not base.endswith("/v1"):
        base += "/v1"
    key = os.environ.get("MOA_SERVER_API_KEY")
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S)
    try:
        async with aiohttp.ClientSession(headers=headers, timeout=timeout) as session:
            model = args.config or await _only_model(session, base)
            return await _chat(session, base, model, args)
    except aiohttp.ClientError as e:
        raise BackendError(f"moa serve at {base} cannot be reached: {type(e).__name__}: {e}") from None


async def _only_model(session: aiohttp.ClientSession, base: str) -> str:
    """The server's ensemble when it serves one (or one named ``default``); else name them."""
    async with session.get(f"{base}/models") as response:
        body = await _json(response)
    names = [m.get("id") for m in body.get("data", []) if isinstance(m, dict)]
    if len(names) == 1 and isinstance(names[0], str):
        return names[0]
    if "default" in names:
        return "default"
    raise ConfigError(f"the server serves {', '.join(map(str, names)) or 'no ensemble'}; pick one with -c", "-c")


async def _json(response: aiohttp.ClientResponse) -> dict[str, Any]:
    try:
        body = await response.json(content_type=None)
    except (ValueError, aiohttp.ContentTypeError):
        body = None
    if response.status >= 400 or not isinstance(body, dict):
        error = body.get("error") if isinstance(body, dict) else None
        message = error.get("message") if isinstance(error, dict) else (await response.text())[:300]
        raise BackendError(f"moa serve answered {response.status}: {message}", status=response.status)
    return body


async def _chat(session: aiohttp.ClientSession, base: str, model: str, args: argparse.Namespace) -> int:
    request: dict[str, Any] = {
        "model": model,
        "messages": [{"role": "user", "content": args.prompt}],
        "stream": True,
        "stream_options": {"include_usage": True, "include_progress": not args.no_progress},
        "moa_trace": bool(args.trace or args.json),
    }
    for name in ("temperature", "max_tokens", "seed"):
        if getattr(args, name, None) is not None:
            request[name] = getattr(args, name)
    view = ProgressView(None if args.no_progress else sys.stderr, live=sys.stderr.isatty())
    streaming = args.stream and not (args.json or args.trace)
    text: list[str] = []
    usage: dict[str, Any] = {}
    calls: list[CallRecord] = []
    async with session.post(f"{base}/chat/completions", json=request) as response:
        if response.status >= 400:
            await _json(response)  # raises with the server's message
        async for raw in response.content:
            line = raw.decode("utf-8", "replace").strip()
            if not line.startswith("data:"):
                continue
            data = line.removeprefix("data:").strip()
            if data == "[DONE]":
                break
            chunk = json.loads(data)
            if "error" in chunk:
                view.freeze()
                raise MoaError(f"moa serve: {chunk['error'].get('message', chunk['error'])}")
            if (event := chunk.get("moa_progress")) is not None:
                view.on_event(ProgressEvent(**{k: v for k, v in event.items() if k in _EVENT_FIELDS}))
                continue
            usage = chunk.get("usage") or usage
            for entry in chunk.get("moa_trace") or []:
                calls += [CallRecord.model_validate(c) for c in entry.get("calls", [])]
            for choice in chunk.get("choices") or []:
                piece = (choice.get("delta") or {}).get("content") or ""
                text.append(piece)
                if streaming and piece:
                    if sys.stdout.isatty():
                        view.freeze()
                    print(piece, end="", flush=True)
    view.freeze()
    answer = "".join(text)
    if args.json:
        body = {"model": model, "text": answer, "usage": usage, "trace": [c.model_dump() for c in calls]}
        print(json.dumps(body, indent=2))
        return 0
    if args.trace:
        print_calls(calls, sys.stderr)
        print(
            f"usage: {usage.get('prompt_tokens', 0)} prompt + {usage.get('completion_tokens', 0)} completion = "
            f"{usage.get('total_tokens', 0)} tokens",
            file=sys.stderr,
        )
        for line in timeline(list(view.rows.values())):
            print(line, file=sys.stderr)
    print() if streaming else print(answer)
    return 0
