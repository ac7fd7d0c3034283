"""The limiters' own schedules, measured where they grant (no network jitter)."""

from __future__ import annotations

import asyncio
import time

from moa.limits import RequestRateLimiter, TokenRateLimiter


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
