"""Hedged calls: a second lane for a call that has sent nothing within its policy's delay; the first lane to
send something wins (``moa.hedge.Hedging`` keeps the latencies and the ``max_extra`` count)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Awaitable, Callable
from contextlib import aclosing

from moa.calls.call import CallState, Send, T
from moa.config import HedgePolicy
from moa.hedge import CallKind, Hedging
from moa.tasks import cancel_and_wait


class _Failed:
    """A lane's exception, handed over its race's queue to the caller."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException) -> None:
        self.error = error


#: a race's markers: a lane's first piece before its answer (a whole call made as a stream), and a lane's end
_FIRST, _END = object(), object()


async def hedged(
    lane: Send[T],
    *,
    policy: HedgePolicy,
    hedging: Hedging,
    model: str,
    kind: CallKind,
    start: Callable[[], Awaitable[None]],
) -> AsyncGenerator[T, None]:
    """A call under ``policy``, hedged: ``lane(state)`` runs once in its own task, and once more (``state.hedge``)
    if it has sent nothing (no piece, no answer) within the policy's delay and ``max_extra`` allows. The first
    lane to send something (or to report its first token) wins: the other is cancelled (``hedge lost``) and the
    winner's items are this generator's. Every exception of a lane reaches the caller: the winner's at once, a
    loser's never, and when every lane failed before winning, the first lane's. ``start()`` (a local engine's
    start) is awaited before the clock starts."""
    await start()  # a local engine's start is not a slow call
    loop = asyncio.get_running_loop()
    began = loop.time()
    hedging.calls += 1
    delay = hedging.delay(policy, model, kind)
    queue: asyncio.Queue[tuple[int, object]] = asyncio.Queue()
    lanes: list[tuple[asyncio.Task[None], CallState]] = []

    def launch(hedge: bool) -> None:
        index = len(lanes)
        state = CallState(hedge=hedge, first_token=lambda: queue.put_nowait((index, _FIRST)))

        async def pump() -> None:
            try:
                async with aclosing(lane(state)) as items:
                    async for item in items:
                        queue.put_nowait((index, item))
                queue.put_nowait((index, _END))
            except BaseException as e:  # every ending reaches the caller (a cancelled lane is a loser's)
                queue.put_nowait((index, _Failed(e)))
                if not isinstance(e, Exception):
                    raise

        lanes.append((asyncio.create_task(pump()), state))

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
                if hedging.admit(policy):
                    if (span := lanes[0][1].span) is not None:
                        span.event("moa.hedge", {"moa.delay_s": loop.time() - began})
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
                hedging.observe(model, kind, loop.time() - began)
                for other, (task, state) in enumerate(lanes):
                    if other != index and not task.done():
                        state.reason = "hedge lost"
                        task.cancel()
            if item is _END:
                return
            if item is not _FIRST:
                yield item  # type: ignore[misc]
    finally:
        await cancel_and_wait(task for task, _ in lanes)
