"""What the handlers of one server share: its settings, its ensembles, its counters."""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass

from aiohttp import web

from moa.ensemble import Ensemble
from moa.errors import ConfigError
from moa.server.auth import APIKeys
from moa.server.metrics import ServerMetrics, check_multiproc_dir
from moa.server.responses.store.base import DEFAULT_TTL_S


@dataclass(frozen=True, slots=True)
class ServerSettings:
    max_queue: int = 512
    max_body_bytes: int = 4 * 1024 * 1024
    api_keys: APIKeys | None = None
    #: seconds a request body may take to arrive (it is read before the request takes a place in the queue)
    read_timeout_s: float = 10.0
    #: seconds an idle keep-alive connection, or one whose headers are unfinished, is kept open
    keepalive_timeout_s: float = 15.0
    #: accept and ignore the fields an ensemble cannot honour (named in ``x-moa-ignored-fields``) instead of a 400
    lenient: bool = False
    #: where stored responses live (``--response-store``); ``None``: one SQLite file under the user's state directory
    response_store: str | None = None
    #: seconds a stored response is kept (``--response-ttl``)
    response_ttl_s: float = DEFAULT_TTL_S
    #: serve the playground page at /ui (``--ui``; moa.server.ui)
    ui: bool = False

    def __post_init__(self) -> None:
        if self.max_queue < 1:
            raise ConfigError("must be >= 1", "--max-queue")
        if self.max_body_bytes < 1024:
            raise ConfigError("must be >= 1024", "--max-body-bytes")
        for value, flag in ((self.read_timeout_s, "--read-timeout"), (self.keepalive_timeout_s, "--keepalive-timeout")):
            if not (math.isfinite(value) and value > 0):
                raise ConfigError("must be a number of seconds > 0", flag)
        check_multiproc_dir()  # before any engine starts


class ServerState:
    """Everything the handlers share; one per application."""

    def __init__(self, ensembles: dict[str, Ensemble], settings: ServerSettings) -> None:
        self.ensembles = ensembles
        self.settings = settings
        self.metrics = ServerMetrics()
        self.admitted = 0  # chat requests running or waiting inside the ensembles
        self.draining = False
        #: the drain timeout passed: the requests still running are being cancelled and answer 503 / an error event
        self.cut_off = False
        #: the tasks serving chat requests, from their first byte of body to their last of answer (drain waits)
        self.handlers: set[asyncio.Task[object]] = set()


STATE = web.AppKey("moa_server_state", ServerState)
