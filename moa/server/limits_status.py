"""Where each backend's limits live, for ``/health``, ``/metrics`` and the ``/ready`` probe."""

from __future__ import annotations

import asyncio

from aiohttp import web

from moa.limits import Limits, LimitsState
from moa.server.metrics import ServerMetrics
from moa.server.state import STATE, ServerState
from moa.shared_limits import SharedLimits

#: seconds ``/ready`` waits for the stores to answer
READY_TIMEOUT_S = 2.0
STATES: tuple[LimitsState, ...] = ("shared", "local-fallback", "local")


def shared_limits(state: ServerState) -> dict[tuple[str, str], Limits]:
    """The limits on a store, by (ensemble, backend); empty when no backend names one."""
    return {
        (name, backend_name): backend.limits
        for name, ensemble in state.ensembles.items()
        for backend_name, backend in ensemble.backends.items()
        if backend.limits.state != "local"
    }


def summary(state: ServerState) -> LimitsState | None:
    """``local-fallback`` when any store is unreachable, else ``shared``; None when no backend names a store."""
    states = {limits.state for limits in shared_limits(state).values()}
    if not states:
        return None
    return "local-fallback" if "local-fallback" in states else "shared"


def fallbacks(state: ServerState) -> list[dict[str, str]]:
    """Each store-backed backend on local limits now, and why (``unreachable (...)``, ``the store refused ...``)."""
    return [
        {"ensemble": ensemble, "backend": backend, "reason": limits.reason or "unknown"}
        for (ensemble, backend), limits in shared_limits(state).items()
        if limits.state == "local-fallback" and isinstance(limits, SharedLimits)
    ]


def describe(state: ServerState, body: dict[str, object]) -> None:
    """Add ``limits`` (and, in fallback, ``limits_fallback`` with the reasons) to a probe's body."""
    if (limits := summary(state)) is not None:
        body["limits"] = limits
        if limits == "local-fallback":
            body["limits_fallback"] = fallbacks(state)


def record(metrics: ServerMetrics, state: ServerState) -> None:
    """``moa_limits_store{ensemble,backend,state}``: 1 for each store-backed backend's current state, else 0."""
    for (ensemble, backend), limits in shared_limits(state).items():
        for s in STATES:
            metrics.record_limits_state(ensemble, backend, s, 1 if limits.state == s else 0)


async def ready(request: web.Request) -> web.Response:
    """200 when the server serves (local engines start before it listens) and every store has answered once."""
    state = request.app[STATE]
    if state.draining:
        return web.json_response({"status": "draining"}, status=503)
    stores = list(shared_limits(state).values())
    try:
        answers = await asyncio.wait_for(asyncio.gather(*(s.ready() for s in stores)), READY_TIMEOUT_S)
    except TimeoutError:
        answers = [False]
    body: dict[str, object] = {"status": "ready" if all(answers) else "waiting for the limits store"}
    describe(state, body)
    return web.json_response(body, status=200 if all(answers) else 503)
