"""The stored response, the protocol every store keeps, and the two settings that choose one.

A record holds what a later request needs in one read: the response object as it was returned, the input items
of its own request (``GET /v1/responses/{id}/input_items``) and ``history``, every item of the conversation up
to and including its output (``previous_response_id`` continues from it without walking the chain). Records
belong to a tenant (a digest of the API key that made them, ``""`` without keys): a store finds a record only
under its own tenant, so another key's lookup is indistinguishable from a missing id.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

__all__ = [
    "DEFAULT_TTL_S",
    "ResponseStore",
    "StoreUnavailable",
    "StoredResponse",
    "default_store_url",
    "open_store",
    "parse_ttl",
    "sqlite_path",
]

from moa.errors import ConfigError
from moa.server.errors import StoreUnavailable

#: ``--response-ttl``'s default: 30 days, as OpenAI keeps stored responses
DEFAULT_TTL_S = 30 * 24 * 3600.0
_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}
_DURATION = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([smhd]?)\s*")


@dataclass(frozen=True, slots=True)
class StoredResponse:
    id: str
    tenant: str
    created_at: float
    response: dict[str, Any]
    input_items: list[dict[str, Any]]
    history: list[dict[str, Any]]

    def to_json(self) -> str:
        """The record as one JSON document (the Redis value; SQLite keeps the parts in columns)."""
        return json.dumps(
            {
                "id": self.id,
                "tenant": self.tenant,
                "created_at": self.created_at,
                "response": self.response,
                "input_items": self.input_items,
                "history": self.history,
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str | bytes) -> StoredResponse:
        data = json.loads(text)
        return cls(
            data["id"], data["tenant"], data["created_at"], data["response"], data["input_items"], data["history"]
        )


class ResponseStore(Protocol):
    """Stored responses by (tenant, id), each expiring ``ttl_s`` after it was written."""

    async def open(self) -> None:
        """Connect, create or check the schema; raises ``ConfigError`` when the store cannot be used."""
        ...

    async def put(self, record: StoredResponse) -> None:
        """Write one record, whole or not at all."""
        ...

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        """The tenant's record of that id, ``None`` when there is none (or it expired, or is another's)."""
        ...

    async def delete(self, tenant: str, response_id: str) -> bool:
        """Remove the tenant's record; ``False`` when there was none."""
        ...

    async def aclose(self) -> None: ...


def default_store_url() -> str:
    """One SQLite file under the user's state directory (``platformdirs``: ``~/.local/state/moa`` on Linux)."""
    from platformdirs import user_state_path

    return f"sqlite:///{user_state_path('moa') / 'responses.sqlite3'}"


def sqlite_path(url: str) -> Path:
    """The file of ``sqlite:///PATH``, read as a file URL: PATH from the root (``sqlite:///var/lib/moa/r.db`` is
    ``/var/lib/moa/r.db``; SQLAlchemy's four slashes, ``sqlite:////var/lib/moa/r.db``, mean the same)."""
    split = urlsplit(url)
    path = split.path.lstrip("/")
    if split.netloc or not path or split.query:
        raise ConfigError("write sqlite:///PATH (an absolute file path after three slashes)", "--response-store")
    return Path("/" + path)


def open_store(url: str, ttl_s: float) -> ResponseStore:
    """The store a ``--response-store`` URL names: ``sqlite:///PATH`` or ``redis://[:password@]host:port/db``."""
    scheme = urlsplit(url).scheme
    if scheme == "sqlite":
        from moa.server.responses.store.sqlite import SQLiteStore

        return SQLiteStore(sqlite_path(url), ttl_s)
    if scheme in ("redis", "rediss"):
        from moa.server.responses.store.redis import RedisStore

        return RedisStore(url, ttl_s)
    raise ConfigError("must be sqlite:///PATH or redis://host:port/db", "--response-store")


def parse_ttl(text: str) -> float:
    """``--response-ttl``: seconds, or a number with ``s``, ``m``, ``h`` or ``d`` (``30d``, ``12h``)."""
    match = _DURATION.fullmatch(text)
    value = float(match.group(1)) * _UNITS[match.group(2)] if match else math.nan
    if not (math.isfinite(value) and value > 0):
        raise ConfigError("must be a duration > 0: seconds, or a number with s, m, h or d (30d)", "--response-ttl")
    return value
