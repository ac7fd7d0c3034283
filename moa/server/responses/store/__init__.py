"""Where stored responses live: one ``ResponseStore`` protocol, a SQLite store (the default) and a Redis store.

base.py    the record (``StoredResponse``), the protocol, the store URL and ``--response-ttl``
sqlite.py  one SQLite file in WAL mode, each write one transaction, the schema versioned
redis.py   one key a response with its TTL, so that every replica reads what another wrote
"""

from __future__ import annotations

from moa.server.responses.store.base import (
    DEFAULT_TTL_S,
    ResponseStore,
    StoredResponse,
    StoreUnavailable,
    default_store_url,
    open_store,
    parse_ttl,
)

__all__ = [
    "DEFAULT_TTL_S",
    "ResponseStore",
    "StoreUnavailable",
    "StoredResponse",
    "default_store_url",
    "open_store",
    "parse_ttl",
]
