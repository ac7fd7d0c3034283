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
from moa.types import Delta

ProgressKind = Literal["started", "first_token", "finished", "failed", "cancelled", "layer_done"]
#: the events that end a call
CALL_ENDS: tuple[ProgressKind, ...] = ("finished", "failed", "cancelled")


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """One step of a request: a call ``started``, sent its ``first_token`` (streamed calls), ``finished``,
    ``failed`` or was ``cancelled``; or a proposer layer is done (``layer_done``: ``agent`` and ``model`` empty,
    ``tokens`` the layer's completion tokens).

    ``call`` numbers the calls of one request from 1 (0 for ``layer_done``), so a call's events can be paired;
    ``elapsed_s`` is seconds since the request began; ``tokens`` the call's completion tokens so far.
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

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(slots=True)
class ProgressSink:
    """Where one request's events go: ``emit`` is called with each, in the order they happen."""

    emit: Callable[[ProgressEvent], None]
    started: float = field(default_factory=time.monotonic)
    _ids: itertools.count[int] = field(default_factory=lambda: itertools.count(1))

    def next_call(self) -> int:
        return next(self._ids)

    def event(self, kind: ProgressKind, *, layer: int, role: str, agent: str, model: str, **fields: Any) -> None:
        self.emit(ProgressEvent(kind, layer, role, agent, model, elapsed_s=time.monotonic() - self.started, **fields))


@dataclass(frozen=True, slots=True)
class _Failed:
    error: BaseException


_END = object()


async def with_progress(
    deltas: Callable[[ProgressSink], AsyncGenerator[Delta, None]],
) -> AsyncGenerator[Delta | ProgressEvent, None]:
    """The stream ``deltas(sink)`` makes, with the progress events its calls report to ``sink`` interleaved as
    they happen.

    The stream runs in its own task and hands each delta over only when the consumer asks
    for the next item, so a consumer that holds a delta holds the stream as before. Closing this closes the
    stream (its calls and connections) before ``aclose`` returns.
    """
    queue: asyncio.Queue[Delta | ProgressEvent | _Failed | object] = asyncio.Queue()
    taken = asyncio.Event()

    async def pump() -> None:
        try:
            async with aclosing(deltas(ProgressSink(queue.put_nowait))) as stream:
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
