"""A call's accounts: its worst case held against the request's budget (``budgeted``), and its progress events
and one trace record however it ends (``recorded``). ``Answer`` says what a record counts for each kind of call."""

from __future__ import annotations

import time
from collections.abc import AsyncGenerator, Awaitable, Callable, Sequence
from contextlib import aclosing
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from moa.budget import utf8_bytes
from moa.calls.call import Call, CallState, Send, T
from moa.errors import BackendError, BudgetExceededError
from moa.progress import ProgressKind
from moa.types import CallRecord, Delta, GenerateResult, Outcome, Usage
from proposers.openai_schema import EmbeddingResult

T_contra = TypeVar("T_contra", contravariant=True)


class Priced(Protocol):
    """What the accounts need of a backend: its name and prices."""

    name: str

    def cost_usd(self, model: str, prompt_tokens: int, completion_tokens: int, cached: int = 0) -> float | None: ...


@dataclass(frozen=True, slots=True)
class Counted:
    """What a call's record counts: its usage, how many generations came (when fewer than asked), its template."""

    usage: Usage
    generations: int | None = None
    template: str | None = None
    seed: int | None = None  # the seed a local proposer sampled with


class Answer(Protocol, Generic[T_contra]):
    """What the record of a call of one kind counts."""

    #: the items are relayed pieces (a stream): their first is a ``first_token`` event
    relays: bool

    def answered(self, call: Call, state: CallState, last: Sequence[T_contra], pieces: list[str]) -> Counted:
        """A call that answered: ``last`` its last item (none: a stream of none), ``pieces`` the text of its
        relayed pieces."""
        ...

    def unfinished(self, state: CallState) -> Counted:
        """A call that failed or was cancelled."""
        ...


class StreamAnswer:
    relays = True

    def answered(self, call: Call, state: CallState, last: Sequence[Delta], pieces: list[str]) -> Counted:
        return Counted(charged(state.usage or Usage(), call.worst, pieces), template=state.template, seed=state.seed)

    def unfinished(self, state: CallState) -> Counted:
        return Counted(state.usage or Usage(), template=state.template, seed=state.seed)


class WholeAnswer:
    relays = False

    def answered(self, call: Call, state: CallState, last: Sequence[GenerateResult], pieces: list[str]) -> Counted:
        [result] = last  # a whole call that answered has its answer
        came = len(result.generations)
        usage = charged(result.usage, call.worst, [g.text for g in result.generations])
        return Counted(usage, came if came < call.n else None, result.template, result.seed)

    def unfinished(self, state: CallState) -> Counted:
        return Counted(Usage())


class EmbeddingAnswer:
    relays = False

    def answered(self, call: Call, state: CallState, last: Sequence[EmbeddingResult], pieces: list[str]) -> Counted:
        [result] = last  # an embeddings call that answered has its answer
        return Counted(Usage(prompt_tokens=result.usage.prompt_tokens))

    def unfinished(self, state: CallState) -> Counted:
        return Counted(Usage())


STREAM, WHOLE, EMBEDDING = StreamAnswer(), WholeAnswer(), EmbeddingAnswer()


def charged(usage: Usage, worst: tuple[int, int], texts: list[str]) -> Usage:
    """The usage a call that answered is charged: the upstream's, where it reported it; where it reported no
    prompt tokens (no usage at all, or a stream's pieces counted by the proposer), the worst case held before
    the call for the prompt and, for the completion, its UTF-8 bytes up to ``max_tokens`` (at least what was
    counted): never less than the upstream bills."""
    if usage.prompt_tokens > 0:
        return usage
    completion = max(usage.completion_tokens, min(utf8_bytes(texts), worst[1]))
    return Usage.of(worst[0], completion, usage.cached_prompt_tokens or None)


def call_record(
    call: Call,
    priced: Priced,
    state: CallState,
    *,
    started: float,
    outcome: Outcome,
    counted: Counted,
    error: str | None = None,
    reason: str | None = None,
) -> CallRecord:
    """The trace record of ``call``: its place, its outcome, what it counted and cost; ``reason`` (else why the
    backend cancelled it, for a cancelled call) says why it was not made or not finished."""
    usage, site = counted.usage, call.site
    cost = None
    if outcome != "skipped":
        cost = priced.cost_usd(call.model, usage.prompt_tokens, usage.completion_tokens, usage.cached_prompt_tokens)
    return CallRecord(
        layer=site.layer,
        role=site.role,
        agent=site.agent,
        step=site.step,
        backend=priced.name,
        model=call.model,
        n=call.n,
        latency_s=time.monotonic() - started,
        retries=state.retries,
        outcome=outcome,
        error=error,
        prompt_tokens=usage.prompt_tokens,
        completion_tokens=usage.completion_tokens,
        generations=counted.generations,
        cached_prompt_tokens=usage.cached_prompt_tokens,
        cost_usd=cost,
        reason=reason or (state.reason if outcome == "cancelled" else None),
        hedge=state.hedge,
        template=counted.template,
        seed=counted.seed,
    )


def budgeted(call: Call, priced: Priced, inner: Send[T]) -> Send[T]:
    """``inner`` with the call's worst case held against the request's budget, when it has one: a call that
    does not fit is recorded as skipped (``reason: budget``) and raises ``BudgetExceededError``; what was held
    is released when the call ends and what its record says it cost is charged."""

    async def send(state: CallState) -> AsyncGenerator[T, None]:
        budget = call.ctx.budget
        needed = priced.cost_usd(call.model, *call.worst)
        held = 0.0
        if budget is not None and needed is not None:
            try:
                budget.hold(needed, f"{call.site.role} {call.site.agent} on {priced.name}")
            except BudgetExceededError as e:
                skipped = Counted(Usage())
                call.ctx.trace.append(
                    call_record(
                        call,
                        priced,
                        CallState(),
                        started=time.monotonic(),
                        outcome="skipped",
                        counted=skipped,
                        error=str(e),
                        reason="budget",
                    )
                )
                raise
            held = needed
        try:
            async with aclosing(inner(state)) as items:
                async for item in items:
                    yield item
        finally:
            if budget is not None and held:
                record = state.record
                budget.settle(held, 0.0 if record is None else record.cost_usd or 0.0)

    return send


#: the progress event that ends a call of each outcome
_PROGRESS_END: dict[str, ProgressKind] = {"ok": "finished", "error": "failed", "cancelled": "cancelled"}


def recorded(
    call: Call, priced: Priced, answer: Answer[T], *, start: Callable[[], Awaitable[None]], inner: Send[T]
) -> Send[T]:
    """``inner`` with its progress events (``started``; ``first_token`` for a stream; how it ended) and exactly
    one trace record in ``call.ctx.trace`` however it ends (``state.record``). ``start()`` (a local engine's
    slow start) is awaited first, outside every attempt's timeout."""

    async def send(state: CallState) -> AsyncGenerator[T, None]:
        site, sink = call.site, call.ctx.progress
        number = sink.next_call() if sink is not None else 0

        def report(kind: ProgressKind, **fields: Any) -> None:
            if sink is not None:
                sink.event(
                    kind,
                    layer=site.layer,
                    role=site.role,
                    agent=site.agent,
                    model=call.model,
                    call=number,
                    step=site.step,
                    **fields,
                )

        started = time.monotonic()
        outcome: Outcome = "cancelled"
        error: str | None = None
        last: list[T] = []  # the last item, once one came
        pieces: list[str] = []
        report("started")
        try:
            await start()
            async with aclosing(inner(state)) as items:
                async for item in items:
                    if answer.relays and isinstance(item, Delta) and item.content:
                        pieces.append(item.content)
                        if len(pieces) == 1:
                            report("first_token", tokens=1)
                    last[:] = [item]
                    yield item
            outcome = "ok"
        except BackendError as e:
            outcome, error = "error", str(e)
            raise
        finally:
            if outcome == "ok":
                counted = answer.answered(call, state, last, pieces)
            else:
                counted = answer.unfinished(state)
            record = call_record(call, priced, state, started=started, outcome=outcome, counted=counted, error=error)
            state.record = record
            call.ctx.trace.append(record)
            report(_PROGRESS_END[outcome], tokens=record.completion_tokens or len(pieces), error=error)

    return send
