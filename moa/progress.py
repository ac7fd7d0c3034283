"""Live progress of a request: one ``ProgressEvent`` as each model call starts, sends its first token and ends,
and as each proposer layer is done.

The backend and the engine report to the ``ProgressSink`` of the request's context (``RequestContext.progress``);
with none (the default) reporting costs one attribute read per call.
``with_progress`` turns a stream of deltas into one that yields the events too, each before what follows it.
"""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from dataclasses import asdict, dataclass, field
from typing import Any, Literal

from moa.tasks import cancel_and_wait
from moa.types import Delta, Proposal

ProgressKind = Literal["started", "first_token", "finished", "failed", "cancelled", "layer_done", "proposal"]
#: the events that end a call
CALL_ENDS: tuple[ProgressKind, ...] = ("finished", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """One step of a request: a call ``started``, sent its ``first_token`` (streamed calls), ``finished``,
    ``failed`` or was ``cancelled``; or a proposer layer is done (``layer_done``: ``agent`` and ``model`` empty,
    ``tokens`` the layer's completion tokens).

    ``call`` numbers the calls of one request from 1 (0 for ``layer_done``), so a call's events can be paired;
    ``elapsed_s`` is seconds since the request began; ``tokens`` the call's completion tokens so far.

    A sink that asks for proposals (``ProgressSink.proposals``) also gets a ``proposal`` event for each proposal
    as its agent's calls finish: ``text`` (tool calls written out) and ``tool_calls`` (OpenAI's shape) set.
    """

    kind: ProgressKind
    layer: int
    role: str
    agent: str
    model: str
    call: int = 0
    elapsed_s: float = 0.0
    tokens: int = 0
    step: str | None = None
    error: str | None = None
    text: str | None = None
    tool_calls: tuple[dict[str, Any], ...] | None = None
    deceptive: bool | None = None  # a proposal's: its agent is marked deceptive (red-teaming)

    def to_dict(self) -> dict[str, Any]:
        """The event as JSON; ``text``, ``tool_calls`` and ``deceptive`` only on a ``proposal`` event."""
        out = asdict(self)
        if self.kind != "proposal":
            del out["text"], out["tool_calls"], out["deceptive"]
        else:
            out["tool_calls"] = list(self.tool_calls or ())
        return out


@dataclass(slots=True)
class ProgressSink:
    """Where one request's events go: ``emit`` is called with each, in the order they happen."""

    emit: Callable[[ProgressEvent], None]
    started: float = field(default_factory=time.monotonic)
    #: report each proposal too (a ``proposal`` event with its text), for a client that shows the panel
    proposals: bool = False
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def next_call(self) -> int:
        return next(self._ids)

    def event(self, kind: ProgressKind, *, layer: int, role: str, agent: str, model: str, **fields: Any) -> None:
        self.emit(ProgressEvent(kind, layer, role, agent, model, elapsed_s=time.monotonic() - self.started, **fields))

    def proposal(self, proposal: Proposal, model: str) -> None:
        """Report one proposal (made with ``model``) as it arrives."""
        calls = tuple(c.to_dict() for c in proposal.tool_calls)
        self.event(
            "proposal",
            layer=proposal.layer,
            role="proposer",
            agent=proposal.agent,
            model=model,
            text=proposal.text,
            tool_calls=calls,
            deceptive=proposal.deceptive,
        )


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException


_END = object()


async def with_progress(
    deltas: Callable[[ProgressSink], AsyncGenerator[Delta, None]], *, proposals: bool = False
) -> AsyncGenerator[Delta | ProgressEvent, None]:
    """The stream ``deltas(sink)`` makes, with the progress events its calls report to ``sink`` interleaved as
    they happen (``proposal`` events too, with ``proposals``).

    The stream runs in its own task and hands each delta over only when the consumer asks
    for the next item, so a consumer that holds a delta holds the stream as before. Closing this closes the
    stream (its calls and connections) before ``aclose`` returns.
    """
    queue: asyncio.Queue[Delta | ProgressEvent | _Failed | object] = asyncio.Queue()
    taken = asyncio.Event()

    async def pump() -> None:
        try:
            async with aclosing(deltas(ProgressSink(queue.put_nowait, proposals=proposals))) as stream:
                async for delta in stream:
                    taken.clear()
                    queue.put_nowait(delta)
                    await taken.wait()
        except Exception as e:  # handed to the consumer, which raises it
            queue.put_nowait(_Failed(e))
        else:
            queue.put_nowait(_END)

    task = asyncio.create_task(pump())
    try:
        while True:
            item = await queue.get()
            if item is _END:
                return
            if isinstance(item, _Failed):
                raise item.error
            assert isinstance(item, (Delta, ProgressEvent))
            yield item
            if isinstance(item, Delta):
                taken.set()
    finally:
        await cancel_and_wait([task])


__all__ = ["CALL_ENDS", "ProgressEvent", "ProgressKind", "ProgressSink", "with_progress"]
