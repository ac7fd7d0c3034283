"""Ending tasks: cancel them and wait until each has finished its cleanup."""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any


async def cancel_and_wait(tasks: Iterable[asyncio.Future[Any]]) -> None:
    """Cancel every task not done yet, then wait for all of them to end; their results and exceptions are
    dropped (each task's owner has read what it needed). A task cancelled while it waits here still ends."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
