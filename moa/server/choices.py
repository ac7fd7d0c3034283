"""Running the ``n`` choices of one chat request: each choice is one whole ensemble run, all at once.

Choice ``i`` samples its final answer with ``seed + i`` when a seed is given, so the choices differ yet the
request stays reproducible. Each choice runs under its own ``RequestContext`` (made by the ensemble, siblings of
one: one id, deadline and budget, ``max_cost_usd`` covering them all; a trace each), and the caller's ``runs``
gets every one of them, so that the calls of a choice that failed are counted too. If one choice fails, the
others are cancelled and the failure is raised.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Mapping
from contextlib import aclosing
from dataclasses import replace
from typing import TypeVar

from moa.context import RequestContext
from moa.ensemble import Ensemble
from moa.progress import ProgressEvent
from moa.sampling import seed_offset
from moa.server.schema import ParsedChat
from moa.tasks import cancel_and_wait
from moa.types import ChatRequest, Completion, Delta

T = TypeVar("T")


def request_for_choice(parsed: ParsedChat, index: int) -> ChatRequest:
    """Choice ``index`` of a parsed request: the request, sampling with ``seed_offset(seed, index)``."""
    request = parsed.request
    return replace(request, params=request.params.merged(seed=seed_offset(request.params.seed, index)))


def contexts_for(
    ensemble: Ensemble, parsed: ParsedChat, request_id: str, trace_context: Mapping[str, str] | None = None
) -> list[RequestContext]:
    """One context for each of the request's ``n`` choices: siblings sharing its deadline and budget (and, when
    traced, the parent of their spans: the client's ``traceparent`` in ``trace_context``)."""
    first = ensemble.context(parsed.request, request_id=request_id, trace_context=trace_context)
    return [first] + [first.choice() for _ in range(parsed.n - 1)]


async def all_or_none(calls: list[Awaitable[T]]) -> list[T]:
    """Every result in order, or the first failure with the other calls cancelled."""
    if len(calls) == 1:
        return [await calls[0]]
    tasks = [asyncio.ensure_future(c) for c in calls]
    try:
        return list(await asyncio.gather(*tasks))
    finally:
        await cancel_and_wait(tasks)


async def complete_choices(
    ensemble: Ensemble,
    parsed: ParsedChat,
    request_id: str,
    runs: list[RequestContext],
    trace_context: Mapping[str, str] | None = None,
) -> list[Completion]:
    """Every choice's completion; ``runs`` gets each choice's context."""
    contexts = contexts_for(ensemble, parsed, request_id, trace_context)
    runs.extend(contexts)
    return await all_or_none([ensemble.arun(request_for_choice(parsed, i), c) for i, c in enumerate(contexts)])


async def _asked(
    stream: AsyncGenerator[Delta | ProgressEvent, None], progress: bool
) -> AsyncGenerator[Delta | ProgressEvent, None]:
    """``stream`` less the call events a request asked only for proposals would get (``proposal`` events pass)."""
    async with aclosing(stream):
        async for item in stream:
            if progress or not isinstance(item, ProgressEvent) or item.kind == "proposal":
                yield item


async def stream_choices(
    ensemble: Ensemble,
    parsed: ParsedChat,
    request_id: str,
    runs: list[RequestContext],
    trace_context: Mapping[str, str] | None = None,
) -> AsyncGenerator[tuple[int, Delta | ProgressEvent], None]:
    """``(choice index, delta)`` as each choice's tokens arrive (and its progress events, when the request asked
    for them); ``runs`` gets each choice's context. Closing this cancels every choice."""
    progress, proposals = parsed.include_progress, parsed.include_proposals
    contexts = contexts_for(ensemble, parsed, request_id, trace_context)
    runs.extend(contexts)
    streams = [
        _asked(
            ensemble.astream_request(
                request_for_choice(parsed, i), progress=progress or proposals, context=c, proposals=proposals
            ),
            progress,
        )
        for i, c in enumerate(contexts)
    ]
    if len(streams) == 1:
        try:
            async for delta in streams[0]:
                yield 0, delta
        finally:
            await streams[0].aclose()
        return
    queue: asyncio.Queue[tuple[int, Delta | ProgressEvent | None, Exception | None]] = asyncio.Queue()

    async def pump(index: int) -> None:
        try:
            async for delta in streams[index]:
                queue.put_nowait((index, delta, None))
        except Exception as e:  # handed to the consumer, which raises it
            queue.put_nowait((index, None, e))
        else:
            queue.put_nowait((index, None, None))

    tasks = [asyncio.ensure_future(pump(i)) for i in range(len(streams))]
    try:
        running = len(tasks)
        while running:
            index, piece, error = await queue.get()
            if error is not None:
                raise error
            if piece is None:
                running -= 1
            else:
                yield index, piece
    finally:
        await cancel_and_wait(tasks)
        for s in streams:
            await s.aclose()
