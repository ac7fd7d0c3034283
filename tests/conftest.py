"""Shared fixtures: one scripted OpenAI-compatible server per test session, reset before each test."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest

from tests.scripted_server import ScriptedServer


@pytest.fixture(scope="session")
async def _server_session() -> AsyncIterator[ScriptedServer]:
    server = ScriptedServer()
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
async def upstream(_server_session: ScriptedServer) -> ScriptedServer:
    _server_session.reset()
    return _server_session


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


@pytest.fixture(scope="session")
def _upstream_thread_session() -> Iterator[ScriptedServer]:
    """A scripted server on its own thread and loop: it keeps answering while a test blocks (sync clients,
    subprocesses)."""
    loop = asyncio.new_event_loop()
    server = ScriptedServer()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    asyncio.run_coroutine_threadsafe(server.start(), loop).result(timeout=10)
    yield server
    asyncio.run_coroutine_threadsafe(server.stop(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


@pytest.fixture(scope="session")
def upstream_sync_url(_upstream_thread_session: ScriptedServer) -> str:
    """The base URL of the threaded scripted server, for tests of synchronous callers and subprocesses."""
    return _upstream_thread_session.base_url


@pytest.fixture
def upstream_thread(_upstream_thread_session: ScriptedServer) -> Iterator[ScriptedServer]:
    """The threaded scripted server (at ``upstream_sync_url``), reset before and after the test."""
    _upstream_thread_session.reset()
    yield _upstream_thread_session
    _upstream_thread_session.reset()


async def stream_text_and_trace(ens: Any, messages: list[dict[str, str]], timeout: float = 5) -> tuple[str, list[Any]]:
    """An ensemble's streamed answer joined, and the trace its last delta carries (within ``timeout`` seconds)."""

    async def collect() -> tuple[str, list[Any]]:
        text, trace = "", []
        async for delta in ens.astream(messages):
            text += delta.content
            trace = delta.trace or trace
        return text, trace

    return await asyncio.wait_for(collect(), timeout=timeout)
