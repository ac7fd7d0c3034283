"""Per-backend limits: requests per second, requests in flight, tokens per minute.

Every limiter hands out slots first come, first served, and computes a waiter's delay once instead of polling.
(asyncio-throttle re-checks every waiter every 10 ms: `python -m benchmarks.bench_limiter` measured 1.13 s of
CPU against our 0.12 s for 2000 queued grants at 500/s, and its whole-window bursts overran the rate: 655/s.)
A waiter that is cancelled gives its place back: the waiters behind it move up and nothing stays reserved.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Literal, Protocol

from moa.config import RateLimit

#: where a backend's limits live: this process, a shared store, or this process while the store is unreachable
LimitsState = Literal["shared", "local-fallback", "local"]


class Limits(Protocol):
    """What a backend asks of its limits (``BackendLimits`` here, ``moa.shared_limits.SharedLimits`` on Redis)."""

    @property
    def state(self) -> LimitsState: ...

    def slot(self, estimated_tokens: int) -> AbstractAsyncContextManager[None]: ...

    def settle(self, estimated_tokens: int, actual_tokens: int) -> None: ...

    async def start(self) -> None: ...

    async def ready(self) -> bool: ...

    async def aclose(self) -> None: ...


class RequestRateLimiter:
    """Requests per second as a virtual schedule (GCRA): grants are spaced ``1 / rps`` apart once ``burst``
    back-to-back grants are used up. Waiters queue FIFO behind one timer, armed for the head's grant time;
    a slot is taken only when it is granted, so a cancelled waiter holds nothing."""

    def __init__(self, rps: float, burst: int = 1) -> None:
        self.interval = 1.0 / rps
        self.tolerance = (burst - 1) * self.interval
        self._tat = 0.0  # theoretical arrival time of the next request at the steady pace (loop time)
        self._waiters: deque[tuple[asyncio.Future[None], float]] = deque()  # (waiter, loop time it arrived)
        self._timer: asyncio.TimerHandle | None = None

    def _take(self, arrived: float) -> None:
        self._tat = max(self._tat, arrived) + self.interval

    def _prune(self) -> None:
        while self._waiters and self._waiters[0][0].done():  # cancelled waiters leave lazily, from the head
            self._waiters.popleft()

    async def acquire(self) -> None:
        loop = asyncio.get_running_loop()
        self._prune()
        now = loop.time()
        if not self._waiters and now >= self._tat - self.tolerance:
            self._take(now)
            return
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append((waiter, now))
        self._arm(loop)
        try:
            await waiter
        except asyncio.CancelledError:
            if waiter.done() and not waiter.cancelled():  # granted, then cancelled before it ran: give it back
                self._tat -= self.interval
                self._arm(loop)
            raise

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        if self._timer is None and self._waiters:
            self._timer = loop.call_at(self._tat - self.tolerance, self._grant, loop)

    def _grant(self, loop: asyncio.AbstractEventLoop) -> None:
        """Timer callback: grant every waiter whose time has come (several within a burst), re-arm for the next."""
        self._timer = None
        now = loop.time()
        while True:
            self._prune()
            if not self._waiters or now < self._tat - self.tolerance:
                break
            waiter, arrived = self._waiters.popleft()
            self._take(arrived)  # a queued waiter's slot follows the schedule, not this timer's lateness
            waiter.set_result(None)
        self._arm(loop)


class TokenRateLimiter:
    """A token bucket of ``tpm`` tokens refilled continuously; calls reserve an estimate and settle the actual.

    One waiter at a time (FIFO, behind a lock) waits for the level to cover its need, re-checking after each
    sleep: calls that settle above their estimate meanwhile push the level down, never below what was granted.
    """

    def __init__(self, tpm: int) -> None:
        self.capacity = float(tpm)
        self.rate = tpm / 60.0
        self._level = float(tpm)
        self._stamp: float | None = None
        self._lock = asyncio.Lock()

    def _refill(self) -> None:
        now = asyncio.get_running_loop().time()
        if self._stamp is not None:
            self._level = min(self.capacity, self._level + (now - self._stamp) * self.rate)
        self._stamp = now

    @property
    def level(self) -> float:
        """Tokens available now (negative while calls that overran their estimate are paid off)."""
        self._refill()
        return self._level

    async def acquire(self, tokens: int) -> None:
        need = min(float(tokens), self.capacity)
        async with self._lock:
            self._refill()
            while self._level < need:
                await asyncio.sleep((need - self._level) / self.rate)
                self._refill()
            self._level -= need

    def settle(self, estimated: int, actual: int) -> None:
        """Charge (or refund) the difference between what a call reserved and what it used."""
        self._refill()
        self._level = min(self.capacity, self._level - (actual - min(estimated, self.capacity)))


class BackendLimits:
    """The limits of one backend, shared by every agent and request that uses it (in this process)."""

    state: LimitsState = "local"

    def __init__(self, config: RateLimit) -> None:
        self.requests = RequestRateLimiter(config.rps, config.burst) if config.rps else None
        self.in_flight = asyncio.Semaphore(config.concurrency) if config.concurrency else None
        self.tokens = TokenRateLimiter(config.tpm) if config.tpm else None

    @asynccontextmanager
    async def slot(self, estimated_tokens: int) -> AsyncIterator[None]:
        """Hold a slot for one call: concurrency first (so queued calls don't burn rate), then rate, then tokens."""
        if self.in_flight is not None:
            await self.in_flight.acquire()
        try:
            if self.requests is not None:
                await self.requests.acquire()
            if self.tokens is not None:
                await self.tokens.acquire(estimated_tokens)
            yield
        finally:
            if self.in_flight is not None:
                self.in_flight.release()

    def settle(self, estimated_tokens: int, actual_tokens: int) -> None:
        if self.tokens is not None:
            self.tokens.settle(estimated_tokens, actual_tokens)

    async def start(self) -> None:
        """Nothing to start in process."""

    async def ready(self) -> bool:
        return True

    async def aclose(self) -> None:
        """Nothing to release in process."""


def estimate_tokens(prompt_chars: int, max_tokens: int | None, n: int) -> int:
    """A pre-call guess of a call's tokens (4 characters a token, the completion at its cap)."""
    return math.ceil(prompt_chars / 4) + (max_tokens or 512) * n


def tokens_from_chars(prompt_chars: int, completion_chars: int) -> int:
    """What a call used when its upstream reported no usage: 4 characters a token, prompt and completion."""
    return math.ceil(prompt_chars / 4) + math.ceil(completion_chars / 4)
