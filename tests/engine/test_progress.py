"""Live progress from the SDK: ``Ensemble.astream(..., progress=True)`` against the scripted server."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from contextlib import aclosing

from moa import Ensemble
from moa.ensemble import build_request
from moa.progress import ProgressEvent
from moa.types import Delta
from tests.support.ensembles import moa_config
from tests.support.scripted_server import ScriptedServer

USER = [{"role": "user", "content": "hello"}]


async def _collect(ens: Ensemble, **overrides: object) -> list[Delta | ProgressEvent]:
    async with aclosing(ens.astream(USER, progress=True, **overrides)) as items:
        return [item async for item in items]


def _kinds(items: list[Delta | ProgressEvent]) -> list[tuple[str, int, str]]:
    return [(e.kind, e.layer, e.agent) for e in items if isinstance(e, ProgressEvent)]


async def test_progress_events_come_in_order_before_the_answers_tokens(upstream: ScriptedServer) -> None:
    upstream.script("p1", answer="one", latency_s=0.05)
    upstream.script("p2", answer="two", latency_s=0.2)
    upstream.script("agg", answer="the final answer")
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1", "p2"], ["p3"]])) as ens:
        items = await _collect(ens)
    assert all(isinstance(i, (Delta, ProgressEvent)) for i in items)
    assert _kinds(items) == [
        ("started", 1, "p1"),
        ("started", 1, "p2"),
        ("finished", 1, "p1"),
        ("finished", 1, "p2"),
        ("layer_done", 1, ""),
        ("started", 2, "p3"),
        ("finished", 2, "p3"),
        ("layer_done", 2, ""),
        ("started", 3, "aggregator"),
        ("first_token", 3, "aggregator"),
        ("finished", 3, "aggregator"),
    ]
    first_token = next(i for i, x in enumerate(items) if isinstance(x, Delta) and x.content)
    before = [x for x in items[:first_token] if isinstance(x, ProgressEvent)]
    assert before[-1].kind == "first_token" and before[-1].agent == "aggregator"
    assert "".join(x.content for x in items if isinstance(x, Delta)) == "the final answer"
    assert isinstance(items[-1], Delta) and items[-1].finish_reason == "stop"

    events = [x for x in items if isinstance(x, ProgressEvent)]
    p2_done = next(e for e in events if e.kind == "finished" and e.agent == "p2")
    assert p2_done.model == "p2" and p2_done.tokens > 0 and p2_done.elapsed_s >= 0.2
    # a call's events share its number; every call has its own
    calls = {(e.agent, e.call) for e in events if e.kind != "layer_done"}
    assert len({c for _, c in calls}) == 4 and all(c > 0 for _, c in calls)
    elapsed = [e.elapsed_s for e in events]
    assert elapsed == sorted(elapsed)


async def test_a_failed_call_is_a_failed_event_and_the_request_goes_on(upstream: ScriptedServer) -> None:
    upstream.script("p1", faults=["400"])
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1", "p2"]])) as ens:
        items = await _collect(ens)
    failed = [e for e in items if isinstance(e, ProgressEvent) and e.kind == "failed"]
    assert [(e.agent, e.layer) for e in failed] == [("p1", 1)]
    assert failed[0].error and "400" in failed[0].error
    assert "".join(x.content for x in items if isinstance(x, Delta)) == "agg answer 0"


async def test_a_failed_request_raises_its_error_after_the_events(upstream: ScriptedServer) -> None:
    upstream.script("p1", faults=["400"])
    seen: list[Delta | ProgressEvent] = []
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        try:
            async for item in ens.astream(USER, progress=True):
                seen.append(item)
        except Exception as e:
            error = e
    assert type(error).__name__ == "InsufficientProposalsError"
    assert _kinds(seen) == [("started", 1, "p1"), ("failed", 1, "p1")]


async def test_closing_the_stream_cancels_its_calls(upstream: ScriptedServer) -> None:
    upstream.script("p1", latency_s=30)
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        stream = ens.astream(USER, progress=True)
        first = await asyncio.wait_for(anext(stream), 5)
        assert isinstance(first, ProgressEvent) and first.kind == "started"
        await _until(lambda: bool(upstream.for_model("p1")))  # the call reached the upstream
        await asyncio.wait_for(stream.aclose(), 5)
        await _until(lambda: upstream.for_model("p1")[0].outcome == "cancelled")


async def _until(condition: Callable[[], bool], timeout: float = 5) -> None:
    async with asyncio.timeout(timeout):
        while not condition():
            await asyncio.sleep(0.01)


async def test_without_progress_the_stream_has_only_deltas_and_no_sink(upstream: ScriptedServer) -> None:
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]])) as ens:
        items = [d async for d in ens.astream(USER)]
        request = build_request(USER, {})
        context = ens.context(request)
        [d async for d in ens.astream_request(request, context=context)]
    assert all(isinstance(d, Delta) for d in items)
    assert context.progress is None
