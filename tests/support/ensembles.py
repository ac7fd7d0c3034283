"""Small builders the tests share: a config against the scripted upstream, and a streamed answer joined."""

from __future__ import annotations

import asyncio
from typing import Any


def moa_config(base_url: str, layers: list[list[str]], aggregator: str = "agg", **extra: Any) -> dict[str, Any]:
    """A config whose agents and aggregator are models of one scripted backend ``up``."""
    backend = {"type": "openai", "base_url": base_url, **extra.pop("backend", {})}
    return {
        "name": "test",
        "backends": {"up": backend},
        "layers": [{"agents": [{"backend": "up", "model": m, "name": m} for m in layer]} for layer in layers],
        "aggregator": {"backend": "up", "model": aggregator, **extra.pop("aggregator_extra", {})},
        **extra,
    }


async def stream_text_and_trace(ens: Any, messages: list[dict[str, str]], timeout: float = 5) -> tuple[str, list[Any]]:
    """An ensemble's streamed answer joined, and the trace its last delta carries (within ``timeout`` seconds)."""

    async def collect() -> tuple[str, list[Any]]:
        text, trace = "", []
        async for delta in ens.astream(messages):
            text += delta.content
            trace = delta.trace or trace
        return text, trace

    return await asyncio.wait_for(collect(), timeout=timeout)
