"""The limiters' own schedules, measured where they grant (no network jitter), and tokens per minute against a
real HTTP server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Coroutine
from typing import Any

import pytest

from moa.backend import Backend, CallSite
from moa.config import OpenAIBackendConfig, RateLimit
from moa.context import RequestContext
from moa.limits import BackendLimits, RequestRateLimiter, TokenRateLimiter
from moa.types import Message, SamplingParams
from tests.support.scripted_server import Raw, ScriptedServer


async def _grant_times(limiter: RequestRateLimiter, count: int) -> list[float]:
    times: list[float] = []

    async def one() -> None:
        await limiter.acquire()
        times.append(time.monotonic())

    await asyncio.gather(*(one() for _ in range(count)))
    return sorted(times)


async def test_steady_pace_never_exceeds_rps_in_any_window() -> None:
    times = await _grant_times(RequestRateLimiter(rps=20), 30)
    # grants are recorded when their task runs, a few ms after the limiter released them: allow 10 ms
    worst = max(sum(1 for t in times if s <= t < s + 0.99) for s in times)
    assert worst <= 20
    assert 29 / (times[-1] - times[0]) <= 20 * 1.02
    assert 29 / (times[-1] - times[0]) >= 20 * 0.9


async def test_burst_lets_the_first_requests_through_together() -> None:
    times = await _grant_times(RequestRateLimiter(rps=10, burst=5), 8)
    assert times[4] - times[0] < 0.02  # five at once
    assert times[5] - times[0] >= 0.09  # then spaced


async def test_token_bucket_waits_for_refill_and_settles() -> None:
    bucket = TokenRateLimiter(tpm=600)  # 10 tokens a second
    await bucket.acquire(600)
    bucket.settle(600, 595)  # used 5 fewer than reserved
    started = time.monotonic()
    await bucket.acquire(7)  # 5 refunded, 2 to wait for: 0.2 s
    assert 0.15 <= time.monotonic() - started < 0.5


async def _cancel_all(tasks: list[asyncio.Task[None]]) -> None:
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_cancelled_rate_waiters_give_their_places_back() -> None:
    limiter = RequestRateLimiter(rps=10)
    await limiter.acquire()  # the first is free; the next slot is 0.1 s away
    waiters = [asyncio.create_task(limiter.acquire()) for _ in range(30)]  # they would take 3 s of slots
    await asyncio.sleep(0)
    await _cancel_all(waiters)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(limiter.acquire(), timeout=1.0)
    assert loop.time() - started <= 0.2  # one interval at most, not the 30 slots the cancelled ones took


async def test_rate_waiters_keep_fifo_order_and_spacing_when_others_leave() -> None:
    limiter = RequestRateLimiter(rps=20)
    await limiter.acquire()
    loop = asyncio.get_running_loop()
    granted: list[tuple[int, float]] = []

    async def wait(i: int) -> None:
        await limiter.acquire()
        granted.append((i, loop.time()))

    tasks = [asyncio.create_task(wait(i)) for i in range(8)]
    await asyncio.sleep(0)
    await _cancel_all([tasks[i] for i in (1, 2, 4, 5)])
    await asyncio.wait_for(asyncio.gather(*(tasks[i] for i in (0, 3, 6, 7))), timeout=5.0)
    assert [i for i, _ in granted] == [0, 3, 6, 7]
    times = [t for _, t in granted]
    assert all(b - a >= 0.05 * 0.9 for a, b in zip(times, times[1:], strict=False))  # still 20/s at most
    assert times[-1] - times[0] <= 0.05 * 3 + 0.08  # the four cancelled left no holes (0.35 s with them)


async def test_rate_limiter_burst_grants_back_to_back() -> None:
    limiter = RequestRateLimiter(rps=5, burst=3)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await asyncio.wait_for(asyncio.gather(*(limiter.acquire() for _ in range(3))), timeout=1.0)
    assert loop.time() - started < 0.1
    await limiter.acquire()
    assert loop.time() - started >= 0.2 * 0.9


async def test_cancelled_concurrency_waiters_do_not_keep_the_slot() -> None:
    limits = BackendLimits(RateLimit(concurrency=1, rps=100))
    held = asyncio.Event()
    release = asyncio.Event()

    async def holder() -> None:
        async with limits.slot(1):
            held.set()
            await release.wait()

    async def waiter() -> None:
        async with limits.slot(1):
            pass

    task = asyncio.create_task(holder())
    await held.wait()
    waiters = [asyncio.create_task(waiter()) for _ in range(5)]
    await asyncio.sleep(0.01)
    await _cancel_all(waiters)
    release.set()
    await task
    await asyncio.wait_for(waiter(), timeout=0.5)
    assert limits.in_flight is not None and not limits.in_flight.locked()


async def test_cancelled_token_waiter_keeps_no_tokens_and_does_not_block_the_queue() -> None:
    bucket = TokenRateLimiter(tpm=600)  # 10 tokens a second
    await bucket.acquire(600)
    big = asyncio.create_task(bucket.acquire(300))  # 30 s away
    small = asyncio.create_task(bucket.acquire(3))  # queued behind it
    await asyncio.sleep(0.05)
    await _cancel_all([big])
    await asyncio.wait_for(small, timeout=2.0)  # 0.3 s of refill, not 30 s
    await asyncio.wait_for(bucket.acquire(5), timeout=2.0)  # the cancelled waiter took none of the refill


async def test_token_waiter_rechecks_the_level_after_sleeping() -> None:
    bucket = TokenRateLimiter(tpm=6000)  # 100 tokens a second
    await bucket.acquire(6000)
    waiter = asyncio.create_task(bucket.acquire(50))  # sleeps 0.5 s
    await asyncio.sleep(0.05)
    bucket.settle(6000, 12000)  # a call used twice its estimate meanwhile: the level is now about -6000
    done, _ = await asyncio.wait({waiter}, timeout=1.0)
    assert not done  # it waits for the level to cover it instead of granting on a schedule computed earlier
    assert bucket.level < 0
    await _cancel_all([waiter])


# ---- tokens per minute against a real server ----------------------------------------------------------

PROMPT = [Message("user", "x" * 200)]  # 50 tokens at 4 characters a token
PARAMS = SamplingParams(max_tokens=1)  # an estimate of 51 tokens a call
ANSWER = "y" * 200  # 50 tokens


def _no_usage_body() -> Raw:
    choice = {"index": 0, "message": {"role": "assistant", "content": ANSWER}, "finish_reason": "stop"}
    return Raw(json.dumps({"id": "x", "object": "chat.completion", "created": 0, "model": "m", "choices": [choice]}))


def _backend(upstream: ScriptedServer, **config: object) -> Backend:
    cfg = OpenAIBackendConfig.model_validate(
        {"type": "openai", "base_url": upstream.base_url, "model": "m", "rate_limit": {"tpm": 600}, **config}
    )
    return Backend.from_config("up", cfg)


async def _waits_for_tokens(call: Coroutine[Any, Any, object], upstream: ScriptedServer, why: str) -> None:
    """``call`` (the seventh) waits for tokens and sends nothing while it waits; then it is cancelled."""
    seventh = asyncio.create_task(call)
    done, _ = await asyncio.wait({seventh}, timeout=1.0)
    assert not done, why
    assert len(upstream.for_model("m")) == 6
    seventh.cancel()
    with pytest.raises(asyncio.CancelledError):
        await seventh


async def test_calls_without_usage_are_charged_their_characters(upstream: ScriptedServer) -> None:
    upstream.script("m", faults=[_no_usage_body() for _ in range(7)])
    backend = _backend(upstream)
    ctx = RequestContext()
    try:
        for _ in range(6):  # 6 calls of ~100 tokens empty the 600-token bucket
            await backend.generate(PROMPT, PARAMS, model="m", site=CallSite(1, "proposer", "m"), ctx=ctx)
        seventh = backend.generate(PROMPT, PARAMS, model="m", site=CallSite(1, "proposer", "m"), ctx=ctx)
        await _waits_for_tokens(seventh, upstream, "the calls were refunded their whole estimate: no usage came")
    finally:
        await backend.aclose()


async def test_streams_that_count_only_pieces_are_charged_their_characters(upstream: ScriptedServer) -> None:
    upstream.script("m", answer=ANSWER)  # one piece of 200 characters; no usage without include_usage
    backend = _backend(upstream, stream_usage=False)
    ctx = RequestContext()

    async def stream() -> str:
        deltas = backend.stream(PROMPT, PARAMS, model="m", site=CallSite(2, "aggregator", "a"), ctx=ctx)
        return "".join([d.content async for d in deltas])

    try:
        for _ in range(6):
            assert await stream() == ANSWER
        await _waits_for_tokens(stream(), upstream, "streamed calls were charged one token a piece")
    finally:
        await backend.aclose()


async def test_a_waiter_cancelled_as_it_is_granted_gives_the_slot_back() -> None:
    limiter = RequestRateLimiter(rps=2)
    await limiter.acquire()
    loop = asyncio.get_running_loop()
    slot_at = loop.time() + 0.5
    waiter = asyncio.create_task(limiter.acquire())
    await asyncio.sleep(0)
    loop.call_at(slot_at, waiter.cancel)  # lands just before or just after the grant: either way it must not leak
    await asyncio.gather(waiter, return_exceptions=True)
    assert waiter.cancelled()
    started = loop.time()
    await asyncio.wait_for(limiter.acquire(), timeout=2.0)
    assert loop.time() - started < 0.25  # the cancelled waiter's slot, not the one after it (0.5 s later)
