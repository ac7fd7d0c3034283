"""One attempt of a call: the proposer's call under the per-call timeout (``timed``), inside a slot of the
backend's limits (``limited``); for whole calls, the answer checked (``checked``) and, when it was made as a
stream, joined (``joined``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from contextlib import aclosing

from moa.calls.call import Call, CallState, Meter, Send, T
from moa.errors import APITimeoutError, MalformedResponseError
from moa.limits import Limits
from moa.telemetry import calling
from moa.tools import ToolCallDelta, calls_of
from moa.types import Delta, GenerateResult, Generation, Usage


async def aclose_stream(stream: AsyncIterator[object]) -> None:
    """Close a stream typed only as an iterator (an async generator, as a rule) now, releasing what it holds."""
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        await aclose()


def timed(call: Call, timeout_s: float, meter: Meter[T], open_: Callable[[], AsyncIterator[T]]) -> Send[T]:
    """The proposer's items (``open_()``: a stream, or one whole answer) with the per-call timeout applied to the
    wait for each (one timer, re-armed per item and paused while the consumer holds one)."""

    async def send(state: CallState) -> AsyncGenerator[T, None]:
        stream = open_()
        loop = asyncio.get_running_loop()
        timer = asyncio.timeout(None)
        chars = 0
        try:
            async with timer:
                while True:
                    timer.reschedule(loop.time() + timeout_s)
                    try:
                        if state.span is None:
                            item = await anext(stream)
                        else:
                            with calling(state.span):  # its HTTP request carries the span's traceparent
                                item = await anext(stream)
                    except StopAsyncIteration:
                        return
                    timer.reschedule(None)
                    chars += meter.chars(item)
                    meter.observe(state, item)
                    yield item
        except TimeoutError:
            if timer.expired():
                what = "no answer within" if chars == 0 else "stream stalled for"
                raise APITimeoutError(f"{call.backend}: {what} {timeout_s:g} s", backend=call.backend) from None
            raise
        finally:
            await aclose_stream(stream)

    return send


def limited(call: Call, limits: Limits, meter: Meter[T], inner: Send[T]) -> Send[T]:
    """``inner`` inside a slot of ``limits`` (held while the attempt runs); the tokens it used are settled when
    it ends, however it ends (the upstream's usage, else estimated from characters)."""

    async def send(state: CallState) -> AsyncGenerator[T, None]:
        async with limits.slot(call.estimate):
            usage: Usage | None = None
            chars = 0
            try:
                async with aclosing(inner(state)) as items:
                    async for item in items:
                        chars += meter.chars(item)
                        usage = meter.usage(item) or usage
                        yield item
            finally:
                limits.settle(call.estimate, meter.used(usage, call.prompt_chars, chars))

    return send


def checked(call: Call, inner: Send[GenerateResult]) -> Send[GenerateResult]:
    """A whole answer with no choices is a malformed one (retried as such)."""

    async def send(state: CallState) -> AsyncGenerator[GenerateResult, None]:
        async with aclosing(inner(state)) as results:
            async for result in results:
                if not result.generations:
                    raise MalformedResponseError(f"{call.backend}: the answer has no choices", backend=call.backend)
                yield result

    return send


def joined(inner: Send[Delta]) -> Send[GenerateResult]:
    """A whole call made as a stream: its pieces joined into one answer (nothing is relayed before the answer,
    so a failure midway is retried like a whole call's)."""

    async def send(state: CallState) -> AsyncGenerator[GenerateResult, None]:
        parts: list[str] = []
        calls: list[ToolCallDelta] = []
        finish_reason: str | None = None
        usage: Usage | None = None
        async with aclosing(inner(state)) as pieces:
            async for delta in pieces:
                parts.append(delta.content)
                calls.extend(delta.tool_calls)
                if delta.finish_reason is not None:
                    finish_reason, usage = delta.finish_reason, delta.usage
        answer = Generation("".join(parts), finish_reason, tool_calls=calls_of(calls))
        yield GenerateResult([answer], usage or Usage(), state.template, state.seed)

    return send
