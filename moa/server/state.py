"""What the handlers of one server share: its settings, its ensembles, its counters."""

from __future__ import annotations

from dataclasses import dataclass

from aiohttp import web

from moa.ensemble import Ensemble
from moa.errors import ConfigError
from moa.server.auth import APIKeys
from moa.server.metrics import ServerMetrics


@dataclass(frozen=True, slots=True)
class ServerSettings:
    max_queue: int = 512
    max_body_bytes: int = 4 * 1024 * 1024
    api_keys: APIKeys | None = None

    def __post_init__(self) -> None:
        if self.max_queue < 1:
            raise ConfigError("must be >= 1", "--max-queue")
        if self.max_body_bytes < 1024:
            raise ConfigError("must be >= 1024", "--max-body-bytes")


class ServerState:
    """Everything the handlers share; one per application."""

    def __init__(self, ensembles: dict[str, Ensemble], settings: ServerSettings) -> None:
        self.ensembles = ensembles
        self.settings = settings
        self.metrics = ServerMetrics()
        self.admitted = 0  # chat requests running or waiting inside the ensembles
        self.draining = False


STATE = web.AppKey("moa_server_state", ServerState)
