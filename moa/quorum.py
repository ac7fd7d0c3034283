"""Quorum: how long a layer waits for its calls once enough proposals are in."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TypeVar

from moa.config import WaitPolicy

_T = TypeVar("_T")


def grace_s(policy: WaitPolicy, took_s: float) -> float:
    """Seconds to wait for the rest once ``policy.min`` proposals are in, ``took_s`` after the layer started."""
    if policy.grace_s is not None:
        return policy.grace_s
    if policy.grace_ratio is not None:
        return policy.grace_ratio * took_s
    return 0.0


async def wait_for_quorum(
    tasks: list[asyncio.Task[_T]], policy: WaitPolicy, proposals: Callable[[_T], int]
) -> set[asyncio.Task[_T]]:
    """Wait until every task is done, or ``policy.min`` proposals (``proposals`` of each successful result) are in
    and the grace after that has passed. Returns the tasks still running (the stragglers), not cancelled."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    pending = set(tasks)
    arrived = 0
    until: float | None = None
    while pending:
        timeout = None if until is None else until - loop.time()
        if timeout is not None and timeout <= 0:
            break
        done, pending = await asyncio.wait(pending, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
        arrived += sum(proposals(t.result()) for t in done if not t.cancelled() and t.exception() is None)
        if until is None and arrived >= policy.min:
            now = loop.time()
            until = now + grace_s(policy, now - started)
    return pending
