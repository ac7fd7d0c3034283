"""Running the server: listen, print where, and on SIGTERM or SIGINT drain in-flight requests, then exit.

Draining stops listening, lets the running chat requests finish for up to the drain timeout, then cuts off
the ones still running: their upstream calls are cancelled, a stream gets an error event (``shutting_down``)
and ``data: [DONE]``, a whole request a 503 with the OpenAI error body. Only then are the connections
closed: the whole takes the drain timeout plus at most ``CLOSE_GRACE_S``.
"""

from __future__ import annotations

import asyncio
import signal
import sys
from typing import TextIO

from aiohttp import web

from moa.config import describe_config
from moa.ensemble import Ensemble
from moa.server.app import create_app
from moa.server.protocol import Runner
from moa.server.state import STATE, ServerSettings, ServerState

#: pending connections the kernel may hold; many clients connecting at once must not wait for a SYN retry
BACKLOG = 4096
#: seconds, after the drain timeout, for cancelled requests to unwind and connections to close
CLOSE_GRACE_S = 0.5


async def serve(
    ensembles: dict[str, Ensemble],
    settings: ServerSettings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    drain_timeout_s: float = 60.0,
    out: TextIO = sys.stdout,
) -> None:
    """Serve until SIGTERM/SIGINT; then stop listening, let running requests finish (up to the timeout), exit."""
    for ensemble in ensembles.values():  # local engines start before the server says it is listening
        await ensemble.astart()
    app = create_app(ensembles, settings)
    protocol = {"keepalive_timeout": settings.keepalive_timeout_s, "access_log": None}
    runner = Runner(
        app, protocol, handle_signals=False, handler_cancellation=True, access_log=None, shutdown_timeout=CLOSE_GRACE_S
    )
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        site = web.TCPSite(runner, host, port, backlog=BACKLOG)
        await site.start()
        bound = site.port  # the port bound, when 0 asked for a free one
        shown = f"[{host}]" if ":" in host else host
        print(f"moa serve: listening on http://{shown}:{bound}/v1", file=out)
        for ensemble in ensembles.values():
            print(f"moa serve: serving {describe_config(ensemble.config)}", file=out)
        if settings.ui:
            print(f"moa serve: playground at http://{shown}:{bound}/ui", file=out)
        out.flush()
        await stop.wait()
        state = app[STATE]
        state.draining = True  # requests on open keep-alive connections now get 503
        await site.stop()  # no new connections
        print(f"moa serve: draining {state.admitted} in-flight request(s)", file=out, flush=True)
        await drain(state, drain_timeout_s)
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        await runner.cleanup()  # closes the connections (the requests on them are done), then the ensembles
    print("moa serve: stopped", file=out, flush=True)


async def drain(state: ServerState, timeout_s: float) -> None:
    """Wait up to ``timeout_s`` for the running chat requests; cut off those still running (each answers 503
    or ends its stream with an error event) and give them ``CLOSE_GRACE_S`` to send that."""
    running = set(state.handlers)
    if running:
        _, running = await asyncio.wait(running, timeout=timeout_s)
    running |= state.handlers  # requests that came in on open keep-alive connections meanwhile
    if not running:
        return
    state.cut_off = True  # the handlers read it when their cancellation arrives
    for task in running:
        task.cancel()
    await asyncio.wait(running, timeout=CLOSE_GRACE_S)
