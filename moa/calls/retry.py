"""The one retry decision (``retry_delay``) and the one attempt loop (``retrying``) of every call."""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncGenerator
from contextlib import aclosing

from moa.calls.call import Call, CallState, Send, T
from moa.config import RetryPolicy
from moa.errors import BackendError

logger = logging.getLogger("moa.backend")  # retries are the backend's to log (README: DEBUG on moa.backend)


def backoff_delay(policy: RetryPolicy, retries_so_far: int, retry_after: float | None) -> float:
    """Seconds to wait before the next attempt: a positive Retry-After as sent, else capped exponential with
    jitter (a Retry-After of 0, negative or in the past must not mean retrying at once)."""
    if retry_after is not None and retry_after > 0:
        return retry_after
    delay = min(policy.initial_backoff_s * 2.0**retries_so_far, policy.max_backoff_s)
    return delay * (1 - 0.25 * random.random())


def retry_delay(policy: RetryPolicy, err: BackendError, retries_so_far: int, remaining_s: float) -> float | None:
    """Whether to retry ``err``, and after how many seconds; ``None``: fail with ``err`` now.

    Retried: the error's class (408, 409, 429, 5xx, timeouts, connection errors, malformed bodies), unless the
    upstream's ``x-should-retry`` verdict says otherwise. Not retried: past ``max_retries``, a Retry-After beyond
    ``max_retry_after_s``, or a wait that would not end before the request's deadline (``remaining_s``).
    """
    if retries_so_far >= policy.max_retries:
        return None
    if not (err.retryable if err.should_retry is None else err.should_retry):
        return None
    if err.retry_after is not None and err.retry_after > policy.max_retry_after_s:
        return None
    delay = backoff_delay(policy, retries_so_far, err.retry_after)
    return delay if delay < remaining_s else None


def retry_event(err: BackendError, retry: int, delay: float) -> dict[str, str | int | float]:
    """A retry's span event: which retry, after what (the error's class and status), after how long."""
    attributes: dict[str, str | int | float] = {
        "moa.retry": retry,
        "error.type": type(err).__name__,
        "moa.delay_s": delay,
    }
    if err.status is not None:
        attributes["http.response.status_code"] = err.status
    return attributes


def retrying(call: Call, policy: RetryPolicy, inner: Send[T]) -> Send[T]:
    """``inner`` again after a failure before its first item, as ``retry_delay`` decides (no wait past the
    request's deadline); a failure after the first item ends the call. Counts ``state.retries``."""

    async def send(state: CallState) -> AsyncGenerator[T, None]:
        while True:
            emitted = False
            try:
                async with aclosing(inner(state)) as items:
                    async for item in items:
                        emitted = True
                        yield item
                return
            except BackendError as err:
                delay = None if emitted else retry_delay(policy, err, state.retries, call.ctx.remaining_s())
                if delay is None:
                    raise
                logger.debug(
                    "%s: %s (status %s); retry %d of %d in %.3f s",
                    call.backend,
                    type(err).__name__,
                    err.status,
                    state.retries + 1,
                    policy.max_retries,
                    delay,
                )
                if state.span is not None:
                    state.span.event("moa.retry", retry_event(err, state.retries + 1, delay))
                await asyncio.sleep(delay)
            state.retries += 1

    return send
