"""The layered executor: proposer layers in order, every call of a layer at once, then the aggregator.

Layer 1 agents answer the conversation; agents of later layers answer it with the surviving proposals of the
layer before as references; an optional defense screens the last layer's proposals (with ``between_layers``,
every layer's) and may answer itself from aggregations of subsets; else the aggregator writes the answer.
Agents the config marks deceptive (red-teaming) get misleading instructions; the aggregator is always trusted.
The trace gets one record per model call, whatever its outcome. Everything runs under the request's deadline,
and cancelling the request cancels every call under it. A run's state comes in one ``RequestContext``
(``moa.context``), made by whoever runs the request (``moa.Ensemble``), and goes down to every call with it; when
the request is traced (``moa.telemetry``) the run, each layer and the aggregation are spans its calls' spans go under.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field, replace
from typing import Any

from moa.backend import Backend, ModelCaller, aclose_stream
from moa.budget import RequestBudget
from moa.config import AgentConfig, EnsembleConfig, HedgePolicy, ReferencesAt, WaitPolicy
from moa.context import RequestContext
from moa.defense_config import DeceptionConfig
from moa.errors import (
    BackendError,
    BudgetExceededError,
    ConfigError,
    ContextLengthError,
    DeadlineExceededError,
    InsufficientProposalsError,
    MoaError,
)
from moa.interfaces import Aggregate, Aggregator, CallSite, Defense
from moa.logprobs import kept_positions, openai_logprobs
from moa.progress import ProgressSink
from moa.prompts import REFERENCE_STOPS, SYNTHESIZE_INSTRUCTIONS, with_references, with_system_prompt
from moa.quorum import wait_for_quorum
from moa.repair import AnswerCheck, CheckFor, checked, checks_for
from moa.sampling import derived_seed, sampling_params, seed_offset
from moa.stops import StopFilter, with_stops
from moa.structured import json_format, schema_check
from moa.tasks import cancel_and_wait
from moa.telemetry import Span, in_span, opened, request_parent
from moa.telemetry.genai import request_attributes, totals
from moa.tool_check import tool_check
from moa.tools import StreamedIds, as_pieces, unique_ids, with_call_text
from moa.types import (
    CallRecord,
    ChatMessage,
    ChatRequest,
    Choice,
    Completion,
    DefenseRecord,
    Delta,
    Generation,
    Message,
    Proposal,
    ProposalRecord,
    SamplingParams,
    Usage,
)
from moa.vote import majority

#: how many times more an aggregation that wrote nothing runs, with the next seed: a small model sometimes opens a
#: reference fence as its first token (moa cuts it: the answer is blank; 1 in 30 seeds of the default recipe).
#: Some references make that likely on every seed: after the reruns the answer is the first reference itself.
BLANK_RERUNS = 2

log = logging.getLogger(__name__)

#: what a request may ask of its final answer (``moa.repair``): each builder makes its check, or none; a final answer
#: failing one gets one repair call, then the check's error
ANSWER_CHECKS: tuple[CheckFor, ...] = (schema_check, tool_check)

#: builds a deceptive agent's prompt from the request, the references, its instructions and its own system prompt
#: (``defenses.deceptive.deceptive_messages``, handed in by whoever builds the engine)
DeceptivePrompt = Callable[[ChatRequest, list[str], DeceptionConfig, str | None], list[Message]]


@dataclass(frozen=True, slots=True)
class Deception:
    """Red-teaming: what a deceptive agent is told, and the builder of its prompt."""

    config: DeceptionConfig
    prompt: DeceptivePrompt


@dataclass(frozen=True, slots=True, kw_only=True)
class Agent:
    name: str
    backend: Backend
    model: str
    params: SamplingParams
    n: int
    system_prompt: str | None
    deception: Deception | None = None  # red-teaming: this agent misleads
    hedge: HedgePolicy | None = None  # its calls' hedge policy (default: the backend's)
    references_at: ReferencesAt = "end"

    @classmethod
    def from_config(
        cls,
        config: AgentConfig,
        name: str,
        backend: Backend,
        default_model: str,
        *,
        deception: Deception | None = None,
        references_at: ReferencesAt = "end",
    ) -> Agent:
        params = sampling_params(config)
        model = config.model or default_model
        return cls(
            name=name,
            backend=backend,
            model=model,
            params=params,
            n=config.n,
            system_prompt=config.system_prompt,
            deception=deception,
            hedge=config.hedge,
            references_at=references_at,
        )

    def messages(self, request: ChatRequest, references: list[str]) -> list[Message]:
        """This agent's prompt: the conversation, and the previous layer's proposals after layer 1."""
        if self.deception is not None:
            return self.deception.prompt(request, references, self.deception.config, self.system_prompt)
        messages = with_system_prompt(request.messages, self.system_prompt)
        if not references:
            return messages
        return with_references(messages, references, SYNTHESIZE_INSTRUCTIONS, self.references_at)


@dataclass(frozen=True, slots=True)
class Layer:
    index: int  # 1-based
    agents: list[Agent]
    min_proposals: int
    wait: WaitPolicy | None = None  # quorum; None: wait for every call


@dataclass(slots=True)
class RequestState:
    """What one request accumulates while it runs; its calls go to ``ctx.trace``."""

    request: ChatRequest
    ctx: RequestContext
    proposals: list[Proposal] = field(default_factory=list)
    defense: list[DefenseRecord] = field(default_factory=list)
    dropped: list[ProposalRecord] = field(default_factory=list)  # the stragglers a quorum went on without
    vote: str | None = None  # decide: vote without a majority: why the aggregator decides (its call's step)

    @property
    def trace(self) -> list[CallRecord]:
        return self.ctx.trace

    def within(self, span: Span | None) -> RequestState:
        """This state (the same proposals, records and trace), its calls' spans going under ``span``."""
        return self if span is None else replace(self, ctx=self.ctx.within(span))


class LayeredEngine:
    def __init__(
        self,
        config: EnsembleConfig,
        backends: dict[str, Backend],
        layers: list[Layer],
        *,
        aggregator: Aggregator,
        defense: Defense | None,
    ) -> None:
        self.config = config
        self.backends = backends
        self.layers = layers
        self.aggregator = aggregator
        self.defense = defense
        agg = config.aggregator
        self._agg_backend = backends[agg.backend]
        self._agg_model = config.model_for(agg.backend, agg.model)
        self._agg_params = sampling_params(agg)

    # ---- proposer layers ---------------------------------------------------------------------------------

    async def _propose(self, agent: Agent, layer: Layer, state: RequestState, references: list[str]) -> list[Proposal]:
        """The agent's proposals; each is reported to a sink that asks for them (``moa_include_proposals``) as soon
        as the agent's calls are done, before its layer is."""
        proposals = await self._proposals(agent, layer, state, references)
        sink = state.ctx.progress
        if sink is not None and sink.proposals:
            model = agent.model
            for p in proposals:
                if p.text.strip():  # a blank one is not kept (the layer drops it), so not shown either
                    sink.proposal(p, model)
        return proposals

    async def _proposals(
        self, agent: Agent, layer: Layer, state: RequestState, references: list[str]
    ) -> list[Proposal]:
        messages = agent.messages(state.request, references)
        site = CallSite(layer.index, "proposer", agent.name)
        deceptive = agent.deception is not None
        hedge = agent.hedge
        # an agent that reads fenced references stops where it would start writing a fence of its own
        markup = REFERENCE_STOPS if references else ()
        params = with_stops(agent.params, markup)
        if params.seed is None and state.request.params.seed is not None:  # a seeded request seeds every agent
            params = params.merged(seed=derived_seed(state.request.params.seed, f"{layer.index}/{agent.name}"))
        fmt = state.request.params.response_format
        if self.config.structured.proposers and fmt is not None and params.response_format is None:
            params = params.merged(response_format=fmt)  # structured: {proposers: true}
        if state.request.tools is not None:  # every proposer is offered the request's tools
            params = params.merged(tools=state.request.tools)

        def proposal(name: str, answer: Generation) -> Proposal:
            """An answer as later layers read it: its text cut at the agent's stops, its calls written out."""
            text = StopFilter(agent.params.stop or (), markup).cut(answer.text)
            return Proposal(layer.index, name, with_call_text(text, answer.tool_calls), deceptive, answer.tool_calls)

        backend, model, ctx = agent.backend, agent.model, state.ctx
        if agent.n == 1:
            result = await backend.generate(messages, params, model=model, site=site, ctx=ctx, hedge=hedge)
            return [proposal(agent.name, result.generations[0])]
        if backend.supports_n:  # one call; a backend may return fewer than n (its record says so)
            result = await backend.generate(messages, params, model=model, site=site, ctx=ctx, n=agent.n, hedge=hedge)
            samples = list(enumerate(result.generations[: agent.n]))
        else:  # the backend takes one sample a call: n calls at once, keeping the samples that arrive
            calls = [
                backend.generate(
                    messages,
                    params.merged(seed=seed_offset(params.seed, i)),
                    model=model,
                    site=CallSite(layer.index, "proposer", f"{agent.name}#{i + 1}"),
                    ctx=ctx,
                    hedge=hedge,
                )
                for i in range(agent.n)
            ]
            results = await asyncio.gather(*calls, return_exceptions=True)
            samples = [(i, r.generations[0]) for i, r in enumerate(results) if not isinstance(r, BaseException)]
            if not samples:
                raise next(r for r in results if isinstance(r, BaseException))
        # a sample keeps the name of the call that made it, whichever others failed
        return [proposal(f"{agent.name}#{i + 1}", answer) for i, answer in samples]

    async def _gather_quorum(
        self, layer: Layer, wait: WaitPolicy, state: RequestState, texts: list[str]
    ) -> list[tuple[Agent, list[Proposal] | BaseException]]:
        """Every agent's outcome that came before ``wait`` let the layer go on; the calls still running then are
        cancelled (traced ``reason: straggler``) and their agents listed in ``state.dropped``."""
        tasks = [asyncio.create_task(self._propose(a, layer, state, texts)) for a in layer.agents]
        try:
            stragglers = await wait_for_quorum(tasks, wait, lambda ps: sum(1 for p in ps if p.text.strip()))
        except BaseException:
            await cancel_and_wait(tasks)
            raise
        mark = len(state.trace)
        await cancel_and_wait(stragglers)
        state.trace[mark:] = [
            r.model_copy(update={"reason": "straggler"}) if r.outcome == "cancelled" and r.reason is None else r
            for r in state.trace[mark:]
        ]
        outcomes: list[tuple[Agent, list[Proposal] | BaseException]] = []
        for agent, task in zip(layer.agents, tasks, strict=True):
            if task in stragglers:
                deceptive = agent.deception is not None
                record = ProposalRecord(
                    layer=layer.index, agent=agent.name, text="", dropped=True, deceptive=deceptive, reason="straggler"
                )
                state.dropped.append(record)
            else:
                outcomes.append((agent, task.exception() or task.result()))
        return outcomes

    async def _run_layer(self, layer: Layer, state: RequestState, references: list[Proposal]) -> list[Proposal]:
        texts = [p.text for p in references]
        if layer.wait is None:
            gathered = await asyncio.gather(
                *(self._propose(a, layer, state, texts) for a in layer.agents), return_exceptions=True
            )
            pairs = list(zip(layer.agents, gathered, strict=True))
        else:
            pairs = await self._gather_quorum(layer, layer.wait, state, texts)
        outcomes = [outcome for _, outcome in pairs]
        survivors: list[Proposal] = []
        failures: dict[str, str] = {}
        for agent, outcome in pairs:
            if isinstance(outcome, (BackendError, BudgetExceededError)):  # the layer goes on with the calls made
                failures[agent.name] = str(outcome)
            elif isinstance(outcome, BaseException):
                raise outcome
            else:
                survivors.extend(p for p in outcome if p.text.strip())
        if len(survivors) < layer.min_proposals:
            over_budget = [o for o in outcomes if isinstance(o, BudgetExceededError)]
            if over_budget:
                raise over_budget[0]
            errors = [o for o in outcomes if isinstance(o, BackendError)]
            if errors and not _empty_proposals(outcomes) and all(isinstance(e, ContextLengthError) for e in errors):
                raise errors[0]  # the prompt fits no proposer: the client's error, not the ensemble's
            failures.update({p.agent: "empty answer" for p in _empty_proposals(outcomes)})
            raise InsufficientProposalsError(layer.index, len(survivors), layer.min_proposals, failures)
        state.proposals.extend(survivors)
        return survivors

    async def _run_layers(self, state: RequestState) -> tuple[list[Proposal], Generation | None]:
        """Every layer in order, each screened by the defense where it applies: the final aggregator's references,
        and the answer when the defense already made one."""
        references: list[Proposal] = []
        answer = None
        for layer in self.layers:
            with opened(state.ctx.span, f"layer {layer.index}", {"moa.layer": layer.index}) as span:
                references, answer = await self._screened_layer(layer, state.within(span), references)
        return references, answer

    async def _screened_layer(
        self, layer: Layer, state: RequestState, references: list[Proposal]
    ) -> tuple[list[Proposal], Generation | None]:
        """One layer's survivors, screened by the defense where it applies (and its answer, when it made one)."""
        answer = None
        references = await self._run_layer(layer, state, references)
        if (sink := state.ctx.progress) is not None:
            tokens = sum(r.completion_tokens for r in state.trace if r.layer == layer.index and r.role == "proposer")
            sink.event("layer_done", layer=layer.index, role="proposer", agent="", model="", tokens=tokens)
        final = layer is self.layers[-1]
        if self.defense is not None and (final or self.defense.between_layers):
            aggregate = self._aggregate_for_defense(state, layer.index)
            ctx = state.ctx.embedding_calls_at(CallSite(layer.index, "defense", "embedder", "embed"))
            verdict = await self.defense.apply(state.request, references, aggregate, final=final, ctx=ctx)
            state.defense.append(verdict.record)
            references, answer = verdict.references, verdict.answer
        return references, answer

    def _aggregate_for_defense(self, state: RequestState, layer: int) -> Aggregate:
        """The trusted aggregator over proposals a defense picks; its calls are traced as ``defense`` at ``layer``,
        and a blank one is run again (then falls back) as the final aggregation is."""

        async def aggregate(references: list[Proposal], step: str) -> Generation:
            """Run again while blank, as the final aggregation is (``BLANK_RERUNS``; steps ``<step>, rerun k``)."""
            for attempt in range(BLANK_RERUNS + 1):
                name = f"{step}, rerun {attempt}" if attempt else step
                caller = self._caller(state, CallSite(layer, "defense", "aggregator", name), attempt=attempt)
                answer = await self.aggregator.aggregate(state.request, references, caller)
                if answer.text.strip() or answer.tool_calls:
                    return answer
            return _fallback(references, answer)

        return aggregate

    def _caller(self, state: RequestState, site: CallSite | None = None, *, attempt: int = 0) -> ModelCaller:
        """The aggregator's caller; ``attempt`` > 0 is a blank answer's rerun: the next seed, its own step name."""
        params = self._agg_params.merged(**_as_overrides(state.request.params))
        if attempt:
            params = params.merged(seed=seed_offset(params.seed, attempt))
        step = f"rerun {attempt}" if attempt else state.vote
        site = site or CallSite(len(self.layers) + 1, "aggregator", "aggregator", step)
        return ModelCaller(self._agg_backend, self._agg_model, params, site, state.ctx, self.config.aggregator.hedge)

    def _voted(self, state: RequestState, references: list[Proposal]) -> Generation | None:
        """``decide: vote``: the answer a strict majority of the final references agree on (``moa.vote``), traced as
        the aggregator's call skipped with the vote's count; ``None`` (the aggregator decides, its call's step says
        why) without a majority, or with ``decide: aggregator``."""
        if self.config.decide != "vote":
            return None
        vote = majority(references, json_answers=json_format(state.request) is not None)
        if vote.answer is None:
            state.vote = vote.reason
            return None
        agg = self.config.aggregator
        state.trace.append(
            CallRecord(
                layer=len(self.layers) + 1,
                role="aggregator",
                agent="aggregator",
                backend=agg.backend,
                model=self._agg_model,
                outcome="skipped",
                reason=vote.reason,
            )
        )
        return vote.answer

    async def _aggregate(self, state: RequestState, references: list[Proposal]) -> Generation:
        """The aggregator's answer, run again (``BLANK_RERUNS`` times at most) while it is blank; still blank, the
        first reference (``_fallback``). Its calls go under the aggregation's span, when the request is traced."""
        with opened(state.ctx.span, "aggregate", {"moa.layer": len(self.layers) + 1}) as span:
            state = state.within(span)
            for attempt in range(BLANK_RERUNS + 1):
                caller = self._caller(state, attempt=attempt)
                answer = await self.aggregator.aggregate(state.request, references, caller)
                if answer.text.strip() or answer.tool_calls:
                    return answer
        return _fallback(references, answer)

    def _checks(self, request: ChatRequest) -> list[AnswerCheck]:
        """The checks of ``request``'s final answer, which is sampled as the aggregator's config and the request say
        (a ``response_format`` from either)."""
        answer_params = self._agg_params.merged(**_as_overrides(request.params))
        return checks_for(replace(request, params=answer_params), ANSWER_CHECKS)

    async def _checked(self, state: RequestState, answer: Generation, checks: list[AnswerCheck]) -> Generation:
        """``answer`` through the repair step: one repair call to the aggregator (traced ``step: repair``) when a
        check fails, then the check's error."""
        if not checks:
            return answer

        async def repair(messages: list[Message]) -> Generation:
            site = CallSite(len(self.layers) + 1, "aggregator", "aggregator", "repair")
            result = await self._caller(state, site).generate(messages)
            return result.generations[0]

        return await checked(answer, state.request.messages, checks, repair)

    def _aggregate_stream(self, state: RequestState, references: list[Proposal]) -> AsyncGenerator[Delta, None]:
        """The aggregator's stream, run again (``BLANK_RERUNS`` times at most) while it has said nothing but blank
        space: what it sent is held until a piece with text comes, so a rerun sends no client anything twice. Its
        calls go under the aggregation's span, when the request is traced."""
        attributes = {"moa.layer": len(self.layers) + 1}
        return in_span(
            state.ctx.span,
            "aggregate",
            attributes,
            lambda span: self._aggregate_stream_in(state.within(span), references),
        )

    async def _aggregate_stream_in(
        self, state: RequestState, references: list[Proposal]
    ) -> AsyncGenerator[Delta, None]:
        for attempt in range(BLANK_RERUNS + 1):
            held: list[Delta] | None = []
            pieces = self.aggregator.stream(state.request, references, self._caller(state, attempt=attempt))
            try:
                async for delta in pieces:
                    if held is None:
                        yield delta
                        continue
                    held.append(delta)
                    if (delta.content and delta.content.strip()) or delta.tool_calls:
                        for piece in held:
                            yield piece
                        held = None
            finally:
                await aclose_stream(pieces)
            if held is None:
                return
        yield Delta(content=_fallback(references, Generation("")).text, finish_reason="stop")

    # ---- whole requests ------------------------------------------------------------------------------------

    def deadline_s(self, request: ChatRequest) -> float | None:
        """The request's deadline: its own may shorten the configured one, never lengthen it."""
        given = [d for d in (request.deadline_s, self.config.deadline_s) if d is not None]
        return min(given) if given else None

    def budget_for(self, request: ChatRequest) -> RequestBudget | None:
        """A budget for ``request``: its own may lower the configured one, never raise it. The choices of one
        request (``n > 1``) share one."""
        given = [b for b in (request.max_cost_usd, self.config.max_cost_usd) if b is not None]
        if not given:
            return None
        if (gap := self.config.budget_gap()) is not None:
            raise ConfigError(f"this ensemble cannot keep a budget: {gap} is not set", "max_cost_usd")
        return RequestBudget(min(given))

    def context_for(
        self,
        request: ChatRequest,
        *,
        request_id: str = "-",
        progress: ProgressSink | None = None,
        trace_context: Mapping[str, str] | None = None,
    ) -> RequestContext:
        """A run's state for ``request``: its deadline (``deadline_s``) running from now, its budget
        (``budget_for``), ``progress`` the sink of its calls' events, and when tracing is on the parent of its
        span (``trace_context``'s W3C ``traceparent``, else the caller's current span). Call it from the event
        loop."""
        return RequestContext.start(
            deadline_s=self.deadline_s(request),
            budget=self.budget_for(request),
            progress=progress,
            request_id=request_id,
            span=request_parent(trace_context),
        )

    @asynccontextmanager
    async def _deadline(self, state: RequestState) -> AsyncIterator[asyncio.Timeout]:
        """The request's deadline (``state.ctx.deadline_at``; backends read the same so that no retry waits past
        it); a failure leaves the calls made so far on the error's ``trace``."""
        ctx = state.ctx
        timer = asyncio.timeout_at(ctx.deadline_at)
        try:
            try:
                async with timer:
                    yield timer
            except TimeoutError:
                if ctx.deadline_s is not None and timer.expired():
                    raise DeadlineExceededError(ctx.deadline_s) from None
                raise
        except MoaError as e:
            e.trace = list(state.trace)
            raise

    async def complete(self, request: ChatRequest, ctx: RequestContext) -> Completion:
        """One run of ``request`` under ``ctx`` (its deadline, budget, trace and progress sink); traced, its span
        is ``invoke_workflow <ensemble>``."""
        name = f"invoke_workflow {self.config.name}"
        with opened(ctx.span, name, request_attributes(self.config.name, ctx.request_id)) as span:
            state = RequestState(request, ctx.within(span))
            try:
                async with self._deadline(state):
                    references, answer = await self._run_layers(state)
                    if answer is None:
                        answer = self._voted(state, references)
                    if answer is None:
                        answer = await self._aggregate(state, references)
                    answer = await self._checked(state, answer, self._checks(request))
            finally:
                if span is not None:
                    span.set(totals(state.trace))
        return Completion(
            model=self.config.name,
            choices=[_choice(answer, request.params.logprobs)],
            usage=Usage.total(state.trace),
            trace=state.trace,
            proposals=[
                ProposalRecord(
                    layer=p.layer,
                    agent=p.agent,
                    text=p.text,
                    deceptive=p.deceptive,
                    tool_calls=[c.to_dict() for c in p.tool_calls],
                )
                for p in state.proposals
            ]
            + state.dropped,
            defense=state.defense,
        )

    def stream(self, request: ChatRequest, ctx: RequestContext) -> AsyncGenerator[Delta, None]:
        """The aggregator's tokens as they come (a defense's finished answer in one piece); the last delta carries
        finish_reason, usage, the trace and the defense's records. Closing it closes the aggregator's stream (its
        slot and connection) before ``aclose`` returns. ``ctx`` as ``complete`` takes it.

        A request whose answer is checked (``ANSWER_CHECKS``: ``response_format``) cannot have it sent before the
        check: its aggregator's call is made whole, checked (and repaired), and the answer streamed in one piece."""
        name = f"invoke_workflow {self.config.name}"
        return in_span(
            ctx.span,
            name,
            request_attributes(self.config.name, ctx.request_id),
            lambda span: self._stream(RequestState(request, ctx.within(span)), ctx),
            end=lambda span: span.set(totals(ctx.trace)),
        )

    async def _stream(self, state: RequestState, ctx: RequestContext) -> AsyncGenerator[Delta, None]:
        checks = self._checks(state.request)
        async with self._deadline(state) as timer:
            references, answer = await self._run_layers(state)
            if answer is None:
                answer = self._voted(state, references)
            finish_reason = "stop"
            if checks:
                if answer is None:
                    answer = await self._aggregate(state, references)
                answer = await self._checked(state, answer, checks)
            if answer is None:
                pieces = self._aggregate_stream(state, references)
            else:
                pieces = _as_stream(answer)
            ids = StreamedIds()  # each call's id unique in the response
            try:
                async for delta in pieces:
                    if delta.finish_reason is not None:
                        finish_reason = delta.finish_reason
                    if delta.tool_calls:
                        finish_reason = "tool_calls"
                    if delta.content or delta.tool_calls or delta.sampled:
                        # no timer runs while the consumer holds a piece (it would cancel the consumer's own work);
                        # a deadline that passed meanwhile is raised here when the consumer asks for more
                        when = timer.when()
                        timer.reschedule(None)
                        yield Delta(
                            content=delta.content,
                            tool_calls=ids.pieces(delta.tool_calls),
                            sampled=delta.sampled,
                            logprobs=delta.logprobs,
                        )
                        if when is not None and asyncio.get_running_loop().time() >= when:
                            raise DeadlineExceededError(ctx.deadline_s or 0.0)
                        timer.reschedule(when)
            finally:
                await aclose_stream(pieces)
        usage, trace = Usage.total(state.trace), state.trace
        yield Delta(finish_reason=finish_reason, usage=usage, trace=trace, defense=state.defense)


def _as_overrides(params: SamplingParams) -> dict[str, Any]:
    """Every field of ``params`` by name, for ``SamplingParams.merged`` (its ``None`` fields change nothing)."""
    return {k: getattr(params, k) for k in SamplingParams.model_fields}


async def _as_stream(answer: Generation) -> AsyncGenerator[Delta, None]:
    """A finished answer as a stream of one delta (a defense's answer, where the aggregator would stream), with
    its log-probabilities where it has them."""
    sampled, alternatives = kept_positions(answer)
    yield Delta(
        content=answer.text,
        finish_reason=_finish_reason(answer),
        tool_calls=as_pieces(answer.tool_calls),
        sampled=sampled,
        logprobs=alternatives,
    )


def _finish_reason(answer: Generation) -> str:
    """The answer's finish reason: ``tool_calls`` when it makes calls (whatever the upstream said)."""
    return "tool_calls" if answer.tool_calls else answer.finish_reason or "stop"


def _choice(answer: Generation, top_logprobs: int | None = None) -> Choice:
    """The answer as a ``chat.completion`` choice: its calls each with an id unique in it, ``content`` null when it
    only calls tools; its logprobs when the request asked (``top_logprobs`` alternatives a position)."""
    calls = [c.to_dict() for c in unique_ids(answer.tool_calls)] or None
    content = answer.text if answer.text or calls is None else None
    logprobs = openai_logprobs(answer, top_logprobs) if top_logprobs is not None else None
    message = ChatMessage(content=content, tool_calls=calls)
    return Choice(message=message, finish_reason=_finish_reason(answer), logprobs=logprobs)


def _fallback(references: list[Proposal], blank: Generation) -> Generation:
    """The answer when every run of the aggregator was blank: the first reference (a layer keeps only proposals
    with text), else the blank answer itself."""
    if not references:
        return blank
    log.warning(
        "the aggregator wrote nothing in %d runs: the answer is %s's proposal", BLANK_RERUNS + 1, references[0].agent
    )
    return Generation(references[0].text, "stop")


def _empty_proposals(outcomes: list[list[Proposal] | BaseException]) -> list[Proposal]:
    """The proposals of a layer's successful calls whose text is blank."""
    return [p for o in outcomes if isinstance(o, list) for p in o if not p.text.strip()]
