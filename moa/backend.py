"""One backend as the engine uses it: a proposer behind its limits, retries, per-call timeout and trace.

``Backend`` is shared by every agent and request naming it; ``ModelCaller`` binds a backend to one model, its
sampling and one request's trace, which is what aggregators and defenses receive to make calls.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from moa import registry
from moa.config import BackendConfig, RetryPolicy
from moa.errors import APITimeoutError, BackendError
from moa.limits import BackendLimits, estimate_tokens
from moa.types import CallRecord, Delta, GenerateResult, Message, SamplingParams
from proposers.base import Proposer


def backoff_delay(policy: RetryPolicy, retries_so_far: int, retry_after: float | None) -> float:
    """Seconds to wait before the next attempt: Retry-After when sane, else capped exponential with jitter."""
    if retry_after is not None and 0 <= retry_after <= policy.max_retry_after_s:
        return retry_after
    delay = min(policy.initial_backoff_s * 2**retries_so_far, policy.max_backoff_s)
    return delay * (1 - 0.25 * random.random())


@dataclass(frozen=True, slots=True)
class CallSite:
    """Where a call sits in a request, for its trace record."""

    layer: int
    role: str
    agent: str
    step: str | None = None


class Backend:
    def __init__(self, name: str, proposer: Proposer, limits: BackendLimits, retry: RetryPolicy, timeout_s: float):
        self.name = name
        self.proposer = proposer
        self.limits = limits
        self.retry = retry
        self.timeout_s = timeout_s

    @classmethod
    def from_config(cls, name: str, config: BackendConfig) -> Backend:
        """The registry's proposer for ``config.type`` behind the backend's configured limits and retries."""
        proposer = registry.resolve("backend", config.type)(name, config)
        return cls(name, proposer, BackendLimits(config.rate_limit), config.retry, config.timeout_s)

    async def start(self) -> None:
        """Finish a proposer's slow start (a local engine) now; calls also await it outside their timeout."""
        start = getattr(self.proposer, "start", None)
        if start is not None:
            await start()

    @property
    def supports_n(self) -> bool:
        return self.proposer.supports_n

    def _record(self, site: CallSite, model: str, n: int, started: float, retries: int, **fields: object) -> CallRecord:
        return CallRecord(
            layer=site.layer, role=site.role, agent=site.agent, step=site.step, backend=self.name, model=model,
            n=n, latency_s=time.monotonic() - started, retries=retries, **fields,
        )  # fmt: skip

    async def generate(
        self,
        messages: list[Message],
        params: SamplingParams,
        n: int,
        model: str,
        site: CallSite,
        trace: list[CallRecord],
    ) -> GenerateResult:
        """One logical call with retries; appends exactly one record to ``trace`` whatever happens."""
        estimate = estimate_tokens(sum(len(m.content) for m in messages), params.max_tokens, n)
        started, retries = time.monotonic(), 0
        try:
            await self.start()
            while True:
                try:
                    async with self.limits.slot(estimate):
                        async with asyncio.timeout(self.timeout_s):
                            result = await self.proposer.generate(messages, params, n, model=model)
                    self.limits.settle(estimate, result.usage.total_tokens)
                    break
                except TimeoutError:
                    err: BackendError = APITimeoutError(
                        f"{self.name}: no answer within {self.timeout_s:g} s", backend=self.name
                    )
                except BackendError as e:
                    err = e
                if not err.retryable or retries >= self.retry.max_retries:
                    raise err
                await asyncio.sleep(backoff_delay(self.retry, retries, err.retry_after))
                retries += 1
        except asyncio.CancelledError:
            trace.append(self._record(site, model, n, started, retries, outcome="cancelled"))
            raise
        except BackendError as e:
            trace.append(self._record(site, model, n, started, retries, outcome="error", error=str(e)))
            raise
        trace.append(
            self._record(
                site, model, n, started, retries,
                prompt_tokens=result.usage.prompt_tokens, completion_tokens=result.usage.completion_tokens,
            )
        )  # fmt: skip
        return result

    async def stream(
        self,
        messages: list[Message],
        params: SamplingParams,
        model: str,
        site: CallSite,
        trace: list[CallRecord],
    ) -> AsyncIterator[Delta]:
        """A streamed call. Retried only until its first piece arrives: after that a failure ends the stream."""
        estimate = estimate_tokens(sum(len(m.content) for m in messages), params.max_tokens, 1)
        started, retries, emitted = time.monotonic(), 0, False
        outcome, error, last = "cancelled", None, None
        try:
            await self.start()
            while True:
                try:
                    async with self.limits.slot(estimate):
                        async for delta in self._stream_once(messages, params, model):
                            emitted = True
                            if delta.finish_reason is not None:
                                last = delta
                            yield delta
                    break
                except BackendError as e:
                    if emitted or not e.retryable or retries >= self.retry.max_retries:
                        raise
                    await asyncio.sleep(backoff_delay(self.retry, retries, e.retry_after))
                    retries += 1
            outcome = "ok"
        except BackendError as e:
            outcome, error = "error", str(e)
            raise
        finally:
            usage = last.usage if last is not None and last.usage is not None else None
            if usage is not None:
                self.limits.settle(estimate, usage.total_tokens)
            trace.append(
                self._record(
                    site, model, 1, started, retries, outcome=outcome, error=error,
                    prompt_tokens=usage.prompt_tokens if usage else 0,
                    completion_tokens=usage.completion_tokens if usage else 0,
                )
            )  # fmt: skip

    async def _stream_once(self, messages: list[Message], params: SamplingParams, model: str) -> AsyncIterator[Delta]:
        """The proposer's stream with the per-call timeout applied to the wait for each piece (one timer, re-armed
        per piece and paused while the consumer holds a piece)."""
        stream = aiter(self.proposer.stream(messages, params, model=model))
        loop = asyncio.get_running_loop()
        timer = asyncio.timeout(None)
        try:
            async with timer:
                while True:
                    timer.reschedule(loop.time() + self.timeout_s)
                    try:
                        delta = await anext(stream)
                    except StopAsyncIteration:
                        return
                    timer.reschedule(None)
                    yield delta
        except TimeoutError:
            if timer.expired():
                raise APITimeoutError(f"{self.name}: stream stalled for {self.timeout_s:g} s", backend=self.name) from None
            raise
        finally:
            await stream.aclose()

    async def aclose(self) -> None:
        await self.proposer.aclose()


@dataclass(slots=True)
class ModelCaller:
    """A backend bound to one model, its sampling, a place in the request and the request's trace."""

    backend: Backend
    model: str
    params: SamplingParams
    site: CallSite
    trace: list[CallRecord]

    async def generate(self, messages: list[Message], n: int = 1, step: str | None = None) -> GenerateResult:
        return await self.backend.generate(messages, self.params, n, self.model, self._at(step), self.trace)

    def stream(self, messages: list[Message], step: str | None = None) -> AsyncIterator[Delta]:
        return self.backend.stream(messages, self.params, self.model, self._at(step), self.trace)

    def _at(self, step: str | None) -> CallSite:
        """The site of one call: ``step`` added to the site's own (a defense's subset, then an aggregator's window)."""
        if step is None:
            return self.site
        if self.site.step:
            step = f"{self.site.step}; {step}"
        return CallSite(self.site.layer, self.site.role, self.site.agent, step)
