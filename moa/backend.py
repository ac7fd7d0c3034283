"""One backend as the engine uses it: a proposer behind its limits, retries, per-call timeout and trace.

``Backend`` is shared by every agent and request naming it; each call is handed its request's context
(``moa.context.RequestContext``: deadline, budget, trace, progress). ``ModelCaller`` binds a backend to one model,
its sampling and one request's context: the ``moa.interfaces.Caller`` that aggregators and defenses receive to make
calls. ``Backend.for_embeddings`` is the ``EmbeddingsBackend`` a defense's OpenAI-compatible embedder is handed.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Coroutine, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, TypeVar

from moa import registry
from moa.budget import prompt_tokens_bound, utf8_bytes
from moa.config import BackendConfig, HedgePolicy, OpenAIBackendConfig, RateLimit, RetryPolicy
from moa.context import RequestContext
from moa.defense_config import OpenAIEmbeddings
from moa.errors import APITimeoutError, BackendError, BudgetExceededError, MalformedResponseError
from moa.hedge import CallKind, Hedging
from moa.interfaces import CallSite as CallSite  # re-exported: callers build sites with the backend
from moa.interfaces import Proposer
from moa.limits import BackendLimits, Limits, estimate_tokens, tokens_from_chars
from moa.pricing import Prices
from moa.progress import ProgressKind, ProgressSink
from moa.shared_limits import limits_for
from moa.stops import cut_result, cut_stream, with_stops
from moa.types import CallRecord, Delta, GenerateResult, Generation, Message, Outcome, SamplingParams, Usage
from proposers.openai_schema import EmbeddingResult

logger = logging.getLogger(__name__)

_T = TypeVar("_T")


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


def tokens_used(usage: Usage | None, prompt_chars: int, completion_chars: int) -> int:
    """A call's tokens for the tokens-per-minute limit: the upstream's usage, else estimated from characters
    (no usage at all, or a stream's usage that counted only the pieces)."""
    if usage is None or usage.total_tokens == 0 or usage.prompt_tokens == 0:
        return tokens_from_chars(prompt_chars, completion_chars)
    return usage.total_tokens


async def aclose_stream(stream: AsyncIterator[Delta]) -> None:
    """Close a stream typed only as an iterator (an async generator, as a rule) now, releasing what it holds."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


#: the progress event that ends a call of each outcome
_PROGRESS_END: dict[str, ProgressKind] = {"ok": "finished", "error": "failed", "cancelled": "cancelled"}


def _report(
    sink: ProgressSink | None, kind: ProgressKind, site: CallSite, model: str, call: int, **fields: Any
) -> None:
    """One progress event of a call, when the request asked for progress (``moa.progress``)."""
    if sink is not None:
        sink.event(kind, site.layer, site.role, site.agent, model, call=call, step=site.step, **fields)


def _cancel_reason(outcome: Outcome, tally: _Tally) -> str | None:
    """The reason a record gives: why the backend cancelled the call, for a call that was cancelled."""
    return tally.reason if outcome == "cancelled" else None


@dataclass(slots=True)
class _Tally:
    """What the attempts of one logical call report to its trace record."""

    retries: int = 0
    usage: Usage | None = None
    reason: str | None = None  # why the call was cancelled, when the backend cancelled it ("hedge lost")
    template: str | None = None  # how the proposer fitted the prompt to its chat template (a stream's last delta)
    first_token: Callable[[], None] | None = None  # told when the call's first piece arrives (a hedge's race)


class _Failed:
    """A hedged lane's exception, handed over its race's queue to the caller."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


#: a race's markers: a lane's first piece before its answer (a whole call made as a stream), and a lane's end
_FIRST, _END = object(), object()


class Backend:
    def __init__(
        self,
        name: str,
        proposer: Proposer,
        limits: Limits,
        retry: RetryPolicy,
        timeout_s: float,
        prices: Prices | None = None,
        hedge: HedgePolicy | None = None,
    ) -> None:
        self.name = name
        self.proposer = proposer
        self.limits = limits
        self.retry = retry
        self.timeout_s = timeout_s
        self.prices = prices
        self.hedge = hedge  # the default of calls that name no policy of their own
        self.hedging = Hedging()

    @classmethod
    def from_config(cls, name: str, config: BackendConfig) -> Backend:
        """The registry's proposer for ``config.type`` behind the backend's configured limits and retries."""
        proposer = registry.resolve("backend", config.type)(name, config)
        limits = limits_for(name, config.rate_limit, getattr(config, "base_url", None))
        return cls(name, proposer, limits, config.retry, config.timeout_s, config.prices, config.hedge)

    @classmethod
    def for_embeddings(cls, config: OpenAIEmbeddings) -> Backend:
        """A defense's ``/embeddings`` endpoint as a backend named ``embeddings``: the chat calls' limits, retries,
        timeout, key and header handling; a bad field is named under ``defense.embeddings``."""
        from proposers.openai_http import OpenAIProposer

        backend_config = OpenAIBackendConfig(
            type="openai",
            base_url=config.base_url,
            api_key_env=config.api_key_env,
            model=config.model,
            headers=config.headers,
            timeout_s=config.timeout_s,
            retry=RetryPolicy(max_retries=config.max_retries),
            rate_limit=RateLimit(concurrency=config.concurrency),
        )
        proposer = OpenAIProposer("embeddings", backend_config, config_path="defense.embeddings")
        return cls(
            "embeddings",
            proposer,
            BackendLimits(backend_config.rate_limit),
            backend_config.retry,
            config.timeout_s,
            config.prices,
        )

    async def start(self) -> None:
        """Finish a proposer's slow start (a local engine) now; calls also await it outside their timeout."""
        start = getattr(self.proposer, "start", None)
        if start is not None:
            await start()
        await self.limits.start()

    @property
    def supports_n(self) -> bool:
        return self.proposer.supports_n

    def cost_usd(self, model: str, prompt_tokens: int, completion_tokens: int, cached: int = 0) -> float | None:
        """What a call of ``model`` with these tokens costs at this backend's prices; ``None`` without prices."""
        if self.prices is None:
            return None
        return self.prices.for_model(model).cost_usd(prompt_tokens, completion_tokens, cached)

    def _record(
        self,
        site: CallSite,
        model: str,
        n: int,
        started: float,
        retries: int,
        *,
        outcome: Outcome = "ok",
        error: str | None = None,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        generations: int | None = None,
        cached_prompt_tokens: int = 0,
        reason: str | None = None,
        hedge: bool = False,
        template: str | None = None,
    ) -> CallRecord:
        cost = (
            None
            if outcome == "skipped"
            else self.cost_usd(model, prompt_tokens, completion_tokens, cached_prompt_tokens)
        )
        return CallRecord(
            layer=site.layer,
            role=site.role,
            agent=site.agent,
            step=site.step,
            backend=self.name,
            model=model,
            n=n,
            latency_s=time.monotonic() - started,
            retries=retries,
            outcome=outcome,
            error=error,
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            generations=generations,
            cached_prompt_tokens=cached_prompt_tokens,
            cost_usd=cost,
            reason=reason,
            hedge=hedge,
            template=template,
        )

    def _hold(self, site: CallSite, model: str, n: int, ctx: RequestContext, worst: tuple[int, int]) -> float:
        """Hold this call's worst case against the request's budget, if it has one, and return it; a call that
        does not fit is recorded as skipped (``reason: budget``) and raises ``BudgetExceededError``."""
        budget = ctx.budget
        needed = self.cost_usd(model, *worst)
        if budget is None or needed is None:
            return 0.0
        try:
            budget.hold(needed, f"{site.role} {site.agent} on {self.name}")
        except BudgetExceededError as e:
            ctx.trace.append(
                self._record(site, model, n, time.monotonic(), 0, outcome="skipped", reason="budget", error=str(e))
            )
            raise
        return needed

    @staticmethod
    def _settle(ctx: RequestContext, held: float, record: CallRecord | None) -> None:
        """Release what a call held against the request's budget and charge what it cost."""
        budget = ctx.budget
        if budget is not None and held:
            budget.settle(held, 0.0 if record is None else record.cost_usd or 0.0)

    async def _retrying(
        self, attempt: Callable[[], AsyncGenerator[_T, None]], tally: _Tally, ctx: RequestContext
    ) -> AsyncGenerator[_T, None]:
        """The one attempt loop of every call: runs ``attempt`` again after a failure before its first item, as
        ``retry_delay`` decides; a failure after the first item ends the call."""
        while True:
            emitted = False
            try:
                async with aclosing(attempt()) as items:
                    async for item in items:
                        emitted = True
                        yield item
                return
            except BackendError as err:
                delay = None if emitted else retry_delay(self.retry, err, tally.retries, ctx.remaining_s())
                if delay is None:
                    raise
                logger.debug(
                    "%s: %s (status %s); retry %d of %d in %.3f s",
                    self.name,
                    type(err).__name__,
                    err.status,
                    tally.retries + 1,
                    self.retry.max_retries,
                    delay,
                )
                await asyncio.sleep(delay)
            tally.retries += 1

    async def _non_streaming_call(
        self,
        site: CallSite,
        model: str,
        n: int,
        ctx: RequestContext,
        attempt: Callable[[], AsyncGenerator[_T, None]],
        tokens: Callable[[_T], dict[str, int | str | None]],
        worst: tuple[int, int],
        tally: _Tally | None = None,
        hedge: bool = False,
    ) -> _T:
        """One logical call answered whole (chat or embeddings) through the one retry loop; appends exactly one
        record to ``trace`` whatever happens (``tokens`` gives the record's token fields of the answer). ``worst``
        (prompt, completion tokens) is held against the request's budget first; ``hedge`` marks the second call
        of a hedged pair."""
        held = self._hold(site, model, n, ctx, worst)
        started, tally = time.monotonic(), tally or _Tally()
        sink = ctx.progress
        call = sink.next_call() if sink is not None else 0
        _report(sink, "started", site, model, call)
        record: CallRecord | None = None
        try:
            await self.start()
            async with aclosing(self._retrying(attempt, tally, ctx)) as it:
                result = await anext(it)  # the first item is the answer: the loop ends with it
            record = self._record(site, model, n, started, tally.retries, hedge=hedge, **tokens(result))  # type: ignore[arg-type]
            _report(sink, "finished", site, model, call, tokens=record.completion_tokens)
            return result
        except asyncio.CancelledError:
            record = self._record(
                site, model, n, started, tally.retries, outcome="cancelled", reason=tally.reason, hedge=hedge
            )
            _report(sink, "cancelled", site, model, call)
            raise
        except BackendError as e:
            record = self._record(site, model, n, started, tally.retries, outcome="error", error=str(e), hedge=hedge)
            _report(sink, "failed", site, model, call, error=str(e))
            raise
        finally:
            if record is not None:
                ctx.trace.append(record)
            self._settle(ctx, held, record)

    async def _race(
        self, policy: HedgePolicy, model: str, kind: CallKind, lane: Callable[[bool, _Tally], AsyncGenerator[_T, None]]
    ) -> AsyncGenerator[_T, None]:
        """A call under ``policy``, hedged: ``lane(hedge, tally)`` runs once in its own task, and once more if it
        has sent nothing (no piece, no answer) within the policy's delay and ``max_extra`` allows. The first lane
        to send something (or to report its first token) wins: the other is cancelled (``hedge lost``) and the
        winner's items are this generator's. Every exception of a lane reaches the caller: the winner's at once,
        a loser's never, and when every lane failed before winning, the first lane's."""
        await self.start()  # a local engine's start is not a slow call
        loop = asyncio.get_running_loop()
        began = loop.time()
        self.hedging.calls += 1
        delay = self.hedging.delay(policy, model, kind)
        queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()
        lanes: list[tuple[asyncio.Task[None], _Tally]] = []

        def launch(hedged: bool) -> None:
            index = len(lanes)
            tally = _Tally(first_token=lambda: queue.put_nowait((index, _FIRST)))

            async def pump() -> None:
                try:
                    async with aclosing(lane(hedged, tally)) as items:
                        async for item in items:
                            queue.put_nowait((index, item))
                    queue.put_nowait((index, _END))
                except BaseException as e:  # every ending reaches the caller (a cancelled lane is a loser's)
                    queue.put_nowait((index, _Failed(e)))
                    if not isinstance(e, Exception):
                        raise

            lanes.append((asyncio.create_task(pump()), tally))

        winner: int | None = None
        failed: dict[int, BaseException] = {}
        try:
            launch(False)
            while True:
                wait = None
                if winner is None and delay is not None and len(lanes) == 1:
                    wait = max(0.0, began + delay - loop.time())
                try:
                    async with asyncio.timeout(wait):
                        index, item = await queue.get()
                except TimeoutError:
                    if self.hedging.admit(policy):
                        launch(True)
                    delay = None
                    continue
                if winner is not None and index != winner:
                    continue  # a loser's last words
                if isinstance(item, _Failed):
                    if winner is not None:
                        raise item.error
                    failed[index] = item.error
                    if len(failed) == len(lanes):
                        raise failed[0]
                    delay = None  # the other lane is the answer now
                    continue
                if winner is None:
                    winner = index
                    self.hedging.observe(model, kind, loop.time() - began)
                    for other, (task, tally) in enumerate(lanes):
                        if other != index and not task.done():
                            tally.reason = "hedge lost"
                            task.cancel()
                if item is _END:
                    return
                if item is not _FIRST:
                    yield item  # type: ignore[misc]
        finally:
            for task, _ in lanes:
                task.cancel()
            await asyncio.gather(*(task for task, _ in lanes), return_exceptions=True)

    async def _hedged(
        self,
        policy: HedgePolicy,
        model: str,
        kind: CallKind,
        call: Callable[[bool, _Tally], Coroutine[Any, Any, _T]],
    ) -> _T:
        """A whole call under ``policy``: ``call(hedge, tally)`` raced as ``_race`` does; the winner's answer."""

        async def lane(hedged: bool, tally: _Tally) -> AsyncGenerator[_T, None]:
            yield await call(hedged, tally)

        async with aclosing(self._race(policy, model, kind, lane)) as answers:
            async for answer in answers:
                return answer
        raise AssertionError("a race ended without an answer")  # pragma: no cover: a lane yields or raises

    async def generate(
        self,
        messages: list[Message],
        params: SamplingParams,
        *,
        model: str,
        site: CallSite,
        ctx: RequestContext,
        n: int = 1,
        hedge: HedgePolicy | None = None,
    ) -> GenerateResult:
        """One logical call with retries; appends exactly one record to ``ctx.trace`` whatever happens (two when it is
        hedged: ``hedge``, else the backend's policy).

        A backend that returns fewer generations than ``n`` is taken at its word: the record's ``generations``
        says how many came; none at all is a malformed answer (retried).

        A hedged call of one sample is made as a stream joined into one answer, so that its race is decided at
        the first token (a slow upstream shows there, not at its last token); ``n > 1``, log-probabilities and
        proposers that do not stream (``streams = False``) are called whole.
        """
        worst = _worst_case(messages, params, n)

        def tokens(result: GenerateResult) -> dict[str, int | str | None]:
            came = len(result.generations)
            usage = _charged(result.usage, worst, [g.text for g in result.generations])
            return {
                "prompt_tokens": usage.prompt_tokens,
                "completion_tokens": usage.completion_tokens,
                "cached_prompt_tokens": usage.cached_prompt_tokens,
                "generations": came if came < n else None,
                "template": result.template,
            }

        policy = hedge or self.hedge
        joined = policy is not None and n == 1 and params.logprobs is None and getattr(self.proposer, "streams", True)

        def call(hedged: bool, tally: _Tally) -> Coroutine[Any, Any, GenerateResult]:
            if joined:
                attempt = lambda: self._joined_once(messages, params, model, tally)  # noqa: E731
            else:
                attempt = lambda: self._generate_once(messages, params, n, model)  # noqa: E731
            return self._non_streaming_call(site, model, n, ctx, attempt, tokens, worst, tally, hedged)

        if policy is None:
            return await call(False, _Tally())
        return await self._hedged(policy, model, "stream" if joined else "whole", call)

    async def _generate_once(
        self, messages: list[Message], params: SamplingParams, n: int, model: str
    ) -> AsyncGenerator[GenerateResult, None]:
        """One attempt: a slot, the call under the per-call timeout, the tokens settled whatever happens."""
        prompt_chars = sum(len(m.content) for m in messages)
        estimate = estimate_tokens(prompt_chars, params.max_tokens, n)
        used = tokens_from_chars(prompt_chars, 0)  # what a call that ends without an answer is charged
        async with self.limits.slot(estimate):
            try:
                try:
                    async with asyncio.timeout(self.timeout_s):
                        result = await self.proposer.generate(messages, params, n, model=model)
                except TimeoutError:
                    raise APITimeoutError(
                        f"{self.name}: no answer within {self.timeout_s:g} s", backend=self.name
                    ) from None
                used = tokens_used(result.usage, prompt_chars, sum(len(g.text) for g in result.generations))
            finally:
                self.limits.settle(estimate, used)
        if not result.generations:
            raise MalformedResponseError(f"{self.name}: the answer has no choices", backend=self.name)
        yield result

    async def _joined_once(
        self, messages: list[Message], params: SamplingParams, model: str, tally: _Tally
    ) -> AsyncGenerator[GenerateResult, None]:
        """One attempt of a whole call made as a stream: its pieces joined into one answer (nothing is relayed
        before the answer, so a failure midway is retried like a whole call's)."""
        parts: list[str] = []
        finish_reason: str | None = None
        usage: Usage | None = None
        async with aclosing(self._stream_once(messages, params, model, tally)) as pieces:
            async for delta in pieces:
                parts.append(delta.content)
                if delta.finish_reason is not None:
                    finish_reason, usage = delta.finish_reason, delta.usage
        yield GenerateResult([Generation("".join(parts), finish_reason)], usage or Usage(), tally.template)

    def stream(
        self,
        messages: list[Message],
        params: SamplingParams,
        *,
        model: str,
        site: CallSite,
        ctx: RequestContext,
        hedge: HedgePolicy | None = None,
    ) -> AsyncGenerator[Delta, None]:
        """A streamed call. Retried only until its first piece arrives: after that a failure ends the stream.
        Hedged (``hedge``, else the backend's policy) until its first piece arrives."""
        policy = hedge or self.hedge
        if policy is None:
            return self._stream_call(messages, params, model, site, ctx, _Tally(), False)
        lane = lambda hedged, tally: self._stream_call(messages, params, model, site, ctx, tally, hedged)  # noqa: E731
        return self._race(policy, model, "stream", lane)

    async def _stream_call(
        self,
        messages: list[Message],
        params: SamplingParams,
        model: str,
        site: CallSite,
        ctx: RequestContext,
        tally: _Tally,
        hedge: bool,
    ) -> AsyncGenerator[Delta, None]:
        """One streamed logical call with its retries; appends exactly one record to ``ctx.trace`` however it ends."""
        worst = _worst_case(messages, params, 1)
        held = self._hold(site, model, 1, ctx, worst)
        started = time.monotonic()
        outcome: Outcome = "cancelled"
        error: str | None = None
        sink = ctx.progress
        call, pieces = (sink.next_call() if sink is not None else 0), 0
        text: list[str] = []
        _report(sink, "started", site, model, call)
        try:
            await self.start()
            async with aclosing(
                self._retrying(lambda: self._stream_once(messages, params, model, tally), tally, ctx)
            ) as it:
                async for delta in it:
                    if delta.content:
                        pieces += 1
                        text.append(delta.content)
                        if pieces == 1:
                            _report(sink, "first_token", site, model, call, tokens=1)
                    yield delta
            outcome = "ok"
        except BackendError as e:
            outcome, error = "error", str(e)
            raise
        finally:
            usage = tally.usage or Usage()
            if outcome == "ok":
                usage = _charged(usage, worst, text)
            record = self._record(
                site,
                model,
                1,
                started,
                tally.retries,
                outcome=outcome,
                error=error,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cached_prompt_tokens=usage.cached_prompt_tokens,
                reason=_cancel_reason(outcome, tally),
                hedge=hedge,
                template=tally.template,
            )
            ctx.trace.append(record)
            self._settle(ctx, held, record)
            kind = _PROGRESS_END.get(outcome, "cancelled")
            _report(sink, kind, site, model, call, tokens=usage.completion_tokens or pieces, error=error)

    async def _stream_once(
        self, messages: list[Message], params: SamplingParams, model: str, tally: _Tally
    ) -> AsyncGenerator[Delta, None]:
        """One streamed attempt under a slot: the proposer's stream with the per-call timeout applied to the wait
        for each piece (one timer, re-armed per piece and paused while the consumer holds a piece); the tokens
        are settled when it ends, however it ends."""
        prompt_chars = sum(len(m.content) for m in messages)
        estimate = estimate_tokens(prompt_chars, params.max_tokens, 1)
        completion_chars = 0
        async with self.limits.slot(estimate):
            stream = self.proposer.stream(messages, params, model=model)
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
                        completion_chars += len(delta.content)
                        if delta.content and (told := tally.first_token) is not None:
                            tally.first_token = None  # once a call, whichever attempt sends it
                            told()
                        if delta.finish_reason is not None and delta.usage is not None:
                            tally.usage = delta.usage
                        if delta.template is not None:
                            tally.template = delta.template
                        yield delta
            except TimeoutError:
                if timer.expired():
                    what = "no answer within" if completion_chars == 0 else "stream stalled for"
                    raise APITimeoutError(f"{self.name}: {what} {self.timeout_s:g} s", backend=self.name) from None
                raise
            finally:
                self.limits.settle(estimate, tokens_used(tally.usage, prompt_chars, completion_chars))
                await aclose_stream(stream)

    async def aclose(self) -> None:
        await self.proposer.aclose()
        await self.limits.aclose()

    async def embed(self, texts: list[str], *, model: str, site: CallSite, ctx: RequestContext) -> EmbeddingResult:
        """One embeddings call behind the backend's limits, retries and timeout; appends one record to
        ``ctx.trace``."""
        worst = (prompt_tokens_bound(utf8_bytes(texts), len(texts)), 0)
        return await self._non_streaming_call(
            site,
            model,
            1,
            ctx,
            lambda: self._embed_once(texts, model),
            lambda result: {"prompt_tokens": result.usage.prompt_tokens},
            worst,
        )

    async def _embed_once(self, texts: list[str], model: str) -> AsyncGenerator[EmbeddingResult, None]:
        """One embeddings attempt under a slot and the per-call timeout; its tokens settled whatever happens."""
        embed = getattr(self.proposer, "embed", None)
        if embed is None:
            raise BackendError(f"{self.name}: this backend cannot make embeddings", backend=self.name)
        prompt_chars = sum(len(t) for t in texts)
        estimate = estimate_tokens(prompt_chars, None, 0)  # prompt tokens only
        used = tokens_from_chars(prompt_chars, 0)
        async with self.limits.slot(estimate):
            try:
                try:
                    async with asyncio.timeout(self.timeout_s):
                        result: EmbeddingResult = await embed(texts, model=model)
                except TimeoutError:
                    raise APITimeoutError(
                        f"{self.name}: no answer within {self.timeout_s:g} s", backend=self.name
                    ) from None
                used = result.usage.total_tokens or used
            finally:
                self.limits.settle(estimate, used)
        yield result


@dataclass(slots=True)
class ModelCaller:
    """A backend bound to one model, its sampling, a place in the request and the request's context."""

    backend: Backend
    model: str
    params: SamplingParams
    site: CallSite
    ctx: RequestContext
    hedge: HedgePolicy | None = None  # the calls' own hedge policy (default: the backend's)

    async def generate(
        self, messages: list[Message], n: int = 1, step: str | None = None, stop: Sequence[str] = ()
    ) -> GenerateResult:
        params = with_stops(self.params, stop)
        result = await self.backend.generate(
            messages, params, model=self.model, site=self._at(step), ctx=self.ctx, n=n, hedge=self.hedge
        )
        return cut_result(result, self.params.stop or (), stop)

    def stream(
        self, messages: list[Message], step: str | None = None, stop: Sequence[str] = ()
    ) -> AsyncGenerator[Delta, None]:
        params = with_stops(self.params, stop)
        deltas = self.backend.stream(
            messages, params, model=self.model, site=self._at(step), ctx=self.ctx, hedge=self.hedge
        )
        return cut_stream(deltas, self.params.stop or (), stop)

    def _at(self, step: str | None) -> CallSite:
        """The site of one call: ``step`` added to the site's own (a defense's subset, then an aggregator's window)."""
        if step is None:
            return self.site
        if self.site.step:
            step = f"{self.site.step}; {step}"
        return CallSite(self.site.layer, self.site.role, self.site.agent, step)


def _worst_case(messages: list[Message], params: SamplingParams, n: int) -> tuple[int, int]:
    """(prompt, completion) tokens a chat call may use at most, for its budget: the prompt's bound from its
    UTF-8 bytes (``moa.budget.prompt_tokens_bound``), ``max_tokens`` for each of ``n`` samples (the limiter's
    512 when unset)."""
    prompt = prompt_tokens_bound(utf8_bytes(m.content for m in messages), len(messages))
    return prompt, (params.max_tokens or 512) * n


def _charged(usage: Usage, worst: tuple[int, int], texts: list[str]) -> Usage:
    """The usage a call that answered is charged: the upstream's, where it reported it; where it reported no
    prompt tokens (no usage at all, or a stream's pieces counted by the proposer), the worst case held before
    the call for the prompt and, for the completion, its UTF-8 bytes up to ``max_tokens`` (at least what was
    counted): never less than the upstream bills."""
    if usage.prompt_tokens > 0:
        return usage
    completion = max(usage.completion_tokens, min(utf8_bytes(texts), worst[1]))
    return Usage.of(worst[0], completion, usage.cached_prompt_tokens or None)
