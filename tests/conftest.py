"""Shared fixtures: one scripted OpenAI-compatible server per test session, reset before each test."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.scripted_server import ScriptedServer


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
