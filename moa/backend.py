"""One backend as the engine uses it: a proposer behind its limits, budget, hedging, retries, per-call timeout
and trace records (the layers in ``moa.calls``, one path for whole calls, streams and embeddings).

``Backend`` is shared by every agent and request naming it; each call is handed its request's context
(``moa.context.RequestContext``: deadline, budget, trace, progress). ``ModelCaller`` binds a backend to one model,
its sampling and one request's context: the ``moa.interfaces.Caller`` that aggregators and defenses receive to
make calls. ``Backend.for_embeddings`` is the ``EmbeddingsBackend`` a defense's OpenAI-compatible embedder is
handed.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass

from moa import registry
from moa.budget import prompt_tokens_bound, utf8_bytes
from moa.calls.attempt import aclose_stream as aclose_stream  # re-exported: the engine closes streams with it
from moa.calls.attempt import checked, joined, limited, timed
from moa.calls.call import DELTAS, EMBEDDINGS, RESULTS, Call, CallState, Meter, Send, T
from moa.calls.call import tokens_used as tokens_used
from moa.calls.hedge import hedged
from moa.calls.record import EMBEDDING, STREAM, WHOLE, Answer, budgeted, recorded
from moa.calls.retry import backoff_delay as backoff_delay
from moa.calls.retry import retry_delay as retry_delay
from moa.calls.retry import retrying
from moa.calls.span import traced
from moa.config import BackendConfig, HedgePolicy, OpenAIBackendConfig, RateLimit, RetryPolicy
from moa.context import RequestContext
from moa.defense_config import OpenAIEmbeddings
from moa.errors import BackendError
from moa.hedge import CallKind, Hedging
from moa.interfaces import CallSite as CallSite  # re-exported: callers build sites with the backend
from moa.interfaces import Proposer
from moa.limits import BackendLimits, Limits, estimate_tokens
from moa.pricing import Prices
from moa.shared_limits import limits_for
from moa.stops import cut_result, cut_stream, with_stops
from moa.telemetry.genai import call_attributes, server
from moa.types import Delta, GenerateResult, Message, SamplingParams
from proposers.openai_schema import EmbeddingResult


class Backend:
    def __init__(
        self,
        name: str,
        proposer: Proposer,
        limits: Limits,
        *,
        retry: RetryPolicy,
        timeout_s: float,
        prices: Prices | None = None,
        hedge: HedgePolicy | None = None,
        provider: str = "openai",
        endpoint: str | None = None,
    ) -> None:
        self.name = name
        self.proposer = proposer
        self.limits = limits
        self.retry = retry
        self.timeout_s = timeout_s
        self.prices = prices
        self.hedge = hedge  # the default of calls that name no policy of their own
        self.hedging = Hedging()
        self.provider = provider  # gen_ai.provider.name of its calls' spans: its config's type
        self.server = server(endpoint)  # server.address and server.port of its calls' spans

    @classmethod
    def from_config(cls, name: str, config: BackendConfig) -> Backend:
        """The registry's proposer for ``config.type`` behind the backend's configured limits and retries."""
        proposer = registry.resolve("backend", config.type)(name, config)
        limits = limits_for(name, config.rate_limit, config.endpoint)
        return cls(
            name,
            proposer,
            limits,
            retry=config.retry,
            timeout_s=config.timeout_s,
            prices=config.prices,
            hedge=config.hedge,
            provider=config.type,
            endpoint=config.endpoint,
        )

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
        limits = BackendLimits(backend_config.rate_limit)
        return cls(
            "embeddings",
            proposer,
            limits,
            retry=backend_config.retry,
            timeout_s=config.timeout_s,
            prices=config.prices,
            endpoint=config.base_url,
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

    # ---- the path of a call (moa.calls): budget > record > retry > [check, join] > limits > timeout ------------

    def _attempt(self, call: Call, meter: Meter[T], open_: Callable[[], AsyncIterator[T]]) -> Send[T]:
        """One attempt: a slot of the limits, the proposer's items (``open_()``) under the per-call timeout."""
        return limited(call, self.limits, meter, timed(call, self.timeout_s, meter, open_))

    def _lane(
        self,
        call: Call,
        answer: Answer[T],
        attempt: Send[T],
        params: SamplingParams | None = None,
        messages: Sequence[Message] = (),
    ) -> Send[T]:
        """One logical call: its budget, its span (a traced request's), its progress and record, its retries
        around ``attempt``."""
        inner = recorded(call, self, answer, start=self.start, inner=retrying(call, self.retry, attempt))
        if call.ctx.span is not None:
            operation = "chat" if params is not None else "embeddings"
            attributes = call_attributes(operation, self.provider, call.model, self.server, params, call.n)
            inner = traced(call, operation, attributes, inner, messages)
        return budgeted(call, self, inner)

    def _chat_call(
        self,
        messages: list[Message],
        params: SamplingParams,
        *,
        model: str,
        site: CallSite,
        ctx: RequestContext,
        n: int,
    ) -> Call:
        prompt_chars = sum(len(m.content) for m in messages)
        return Call(
            backend=self.name,
            model=model,
            site=site,
            ctx=ctx,
            n=n,
            prompt_chars=prompt_chars,
            estimate=estimate_tokens(prompt_chars, params.max_tokens, n),
            worst=_worst_case(messages, params, n),
        )

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
        """One logical call with retries; appends exactly one record to ``ctx.trace`` whatever happens (two when it
        is hedged: ``hedge``, else the backend's policy).

        A backend that returns fewer generations than ``n`` is taken at its word: the record's ``generations``
        says how many came; none at all is a malformed answer (retried).

        A hedged call of one sample is made as a stream joined into one answer, so that its race is decided at
        the first token (a slow upstream shows there, not at its last token); ``n > 1``, log-probabilities and
        proposers that do not stream (``streams = False``) are called whole.
        """
        call = self._chat_call(messages, params, model=model, site=site, ctx=ctx, n=n)
        policy = hedge or self.hedge
        as_stream = (
            policy is not None and n == 1 and params.logprobs is None and getattr(self.proposer, "streams", True)
        )
        attempt: Send[GenerateResult]
        if as_stream:
            attempt = joined(self._attempt(call, DELTAS, lambda: self.proposer.stream(messages, params, model=model)))
        else:
            attempt = self._attempt(
                call, RESULTS, lambda: _one(self.proposer.generate(messages, params, n, model=model))
            )
        lane = self._lane(call, WHOLE, checked(call, attempt), params, messages)
        if policy is None:
            return await _answer(lane(CallState()))
        kind: CallKind = "stream" if as_stream else "whole"
        return await _answer(
            hedged(lane, policy=policy, hedging=self.hedging, model=model, kind=kind, start=self.start)
        )

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
        """A streamed call, one record in ``ctx.trace`` however it ends. Retried only until its first piece
        arrives: after that a failure ends the stream. Hedged (``hedge``, else the backend's policy) until its first
        piece arrives."""
        call = self._chat_call(messages, params, model=model, site=site, ctx=ctx, n=1)
        attempt = self._attempt(call, DELTAS, lambda: self.proposer.stream(messages, params, model=model))
        lane = self._lane(call, STREAM, attempt, params, messages)
        policy = hedge or self.hedge
        if policy is None:
            return lane(CallState())
        return hedged(lane, policy=policy, hedging=self.hedging, model=model, kind="stream", start=self.start)

    async def embed(self, texts: list[str], *, model: str, site: CallSite, ctx: RequestContext) -> EmbeddingResult:
        """One embeddings call behind the backend's limits, retries and timeout; appends one record to
        ``ctx.trace``."""
        prompt_chars = sum(len(t) for t in texts)
        call = Call(
            backend=self.name,
            model=model,
            site=site,
            ctx=ctx,
            prompt_chars=prompt_chars,
            estimate=estimate_tokens(prompt_chars, None, 0),  # prompt tokens only
            worst=(prompt_tokens_bound(utf8_bytes(texts), len(texts)), 0),
        )
        attempt = self._attempt(call, EMBEDDINGS, lambda: self._embeddings(texts, model))
        return await _answer(self._lane(call, EMBEDDING, attempt)(CallState()))

    async def _embeddings(self, texts: list[str], model: str) -> AsyncGenerator[EmbeddingResult, None]:
        embed = getattr(self.proposer, "embed", None)
        if embed is None:
            raise BackendError(f"{self.name}: this backend cannot make embeddings", backend=self.name)
        result: EmbeddingResult = await embed(texts, model=model)
        yield result

    async def aclose(self) -> None:
        await self.proposer.aclose()
        await self.limits.aclose()


async def _one(answer: Awaitable[T]) -> AsyncGenerator[T, None]:
    """A whole answer as a stream of one item."""
    yield await answer


async def _answer(items: AsyncGenerator[T, None]) -> T:
    """The one item of a whole call's stream, read to its end (so that its record is made before it returns)."""
    answer: T | None = None
    async with aclosing(items) as it:
        async for item in it:
            answer = item
    assert answer is not None, "a whole call's path ends with its answer or raises"
    return answer


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
