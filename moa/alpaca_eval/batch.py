"""Many independent items through async work with bounded concurrency, each result checkpointed when done.

``concurrency`` workers pull the next pending index; below that bound each backend's own limiter decides how
fast calls go, so a long batch runs at the backend's rate limit. An item counts as done only once its record is
durable in the checkpoint; an item whose work raises a ``MoaError`` (after the engine's retries) is a failure,
listed for the caller and left pending for the next run. Anything else is a bug and stops the batch.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from moa.alpaca_eval.checkpoint import Checkpoint
from moa.alpaca_eval.progress import Progress
from moa.errors import MoaError

#: index -> (record to checkpoint, tokens spent)
Work = Callable[[int], Awaitable[tuple[dict[str, Any], int]]]


@dataclass(frozen=True, slots=True, order=True)
class Failure:
    index: int
    error: str


async def run_batch(
    pending: list[int], work: Work, checkpoint: Checkpoint, *, progress: Progress, concurrency: int
) -> list[Failure]:
    """Run ``work`` on every pending index; returns the failures, by index."""
    queue = iter(pending)  # shared by the workers: each ``next`` hands one index to one worker
    failures: list[Failure] = []

    async def worker() -> None:
        for index in queue:
            item = progress.begin()
            try:
                record, tokens = await work(index)
            except MoaError as e:
                failures.append(Failure(index, str(e)))
                progress.advance(failed=1, item=item)
                continue
            await asyncio.to_thread(checkpoint.append, record)  # fsync off the event loop
            progress.advance(done=1, tokens=tokens, item=item)

    progress.concurrency = max(1, min(concurrency, len(pending)))  # the ETA's waves
    heartbeat = asyncio.create_task(progress.heartbeat())
    try:
        async with asyncio.TaskGroup() as group:
            for _ in range(min(concurrency, len(pending))):
                group.create_task(worker())
    finally:
        heartbeat.cancel()
        progress.show(final=True)
    return sorted(failures)


__all__ = ["Failure", "Work", "run_batch"]
