"""Stored responses in one SQLite file: WAL, every write one transaction, the schema versioned.

The file is opened once, on a thread of its own (SQLite's calls block; the event loop never waits on the
disk). ``journal_mode=WAL`` with ``synchronous=NORMAL``: a committed transaction survives the process being
killed (``kill -9``), and a crash mid-write leaves the last committed state; readers never block the writer.
The schema's version is ``PRAGMA user_version``: a file written by a newer moa is refused, naming the option.
Expired records are never read, and are deleted in the same transaction as a write, at most once a minute.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import TypeVar

from moa.errors import ConfigError
from moa.server.errors import StoreUnavailable
from moa.server.responses.store.base import StoredResponse

T = TypeVar("T")

#: the schema this code writes and reads (``PRAGMA user_version``)
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    tenant TEXT NOT NULL,
    id TEXT NOT NULL,
    created_at REAL NOT NULL,
    expires_at REAL NOT NULL,
    response TEXT NOT NULL,
    input_items TEXT NOT NULL,
    history TEXT NOT NULL,
    PRIMARY KEY (tenant, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS responses_expiry ON responses (expires_at);
"""
#: seconds between purges of expired records
PURGE_INTERVAL_S = 60.0
#: milliseconds a write waits for another process's (another replica on the same file)
BUSY_TIMEOUT_MS = 5000


class SQLiteStore:
    def __init__(self, path: Path, ttl_s: float) -> None:
        self.path = path
        self.ttl_s = ttl_s
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix="moa-response-store")
        self._db: sqlite3.Connection | None = None
        self._purged_at = 0.0

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"

    async def _run(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        db = self._db
        if db is None:
            raise StoreUnavailable("the response store is not open")

        def call() -> T:
            try:
                return fn(db)
            except sqlite3.Error as e:
                raise StoreUnavailable(f"the response store failed: {type(e).__name__}: {e}") from None

        return await asyncio.get_running_loop().run_in_executor(self._thread, call)

    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._thread, self._open)

    def _open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        except (OSError, sqlite3.Error) as e:
            raise ConfigError(f"cannot open {self.path}: {type(e).__name__}: {e}", "--response-store") from None
        try:
            db.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            db.execute("PRAGMA journal_mode = WAL")
            db.execute("PRAGMA synchronous = NORMAL")
            (version,) = db.execute("PRAGMA user_version").fetchone()
            if version == 0:  # a new file; the script may run twice (replicas starting at once): it is idempotent
                db.executescript(f"BEGIN IMMEDIATE;{SCHEMA}PRAGMA user_version = {SCHEMA_VERSION};COMMIT;")
        except sqlite3.Error as e:
            db.close()
            raise ConfigError(f"cannot use {self.path}: {type(e).__name__}: {e}", "--response-store") from None
        if version not in (0, SCHEMA_VERSION):
            db.close()
            raise ConfigError(
                f"{self.path} holds schema version {version}; this moa reads version {SCHEMA_VERSION}",
                "--response-store",
            )
        self._db = db

    async def put(self, record: StoredResponse) -> None:
        now = time.time()
        purge = now - self._purged_at >= PURGE_INTERVAL_S
        if purge:
            self._purged_at = now
        row = (
            record.tenant,
            record.id,
            record.created_at,
            now + self.ttl_s,
            _dumps(record.response),
            _dumps(record.input_items),
            _dumps(record.history),
        )

        def write(db: sqlite3.Connection) -> None:
            with db:  # one transaction: the record whole, or nothing
                db.execute("BEGIN IMMEDIATE")
                db.execute("INSERT OR REPLACE INTO responses VALUES (?, ?, ?, ?, ?, ?, ?)", row)
                if purge:
                    db.execute("DELETE FROM responses WHERE expires_at <= ?", (now,))

        await self._run(write)

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        def read(db: sqlite3.Connection) -> tuple[float, str, str, str] | None:
            found: tuple[float, str, str, str] | None = db.execute(
                "SELECT created_at, response, input_items, history FROM responses "
                "WHERE tenant = ? AND id = ? AND expires_at > ?",
                (tenant, response_id, time.time()),
            ).fetchone()
            return found

        row = await self._run(read)
        if row is None:
            return None
        created_at, response, input_items, history = row
        return StoredResponse(
            response_id, tenant, created_at, json.loads(response), json.loads(input_items), json.loads(history)
        )

    async def delete(self, tenant: str, response_id: str) -> bool:
        def remove(db: sqlite3.Connection) -> bool:
            with db:
                db.execute("BEGIN IMMEDIATE")
                cursor = db.execute(
                    "DELETE FROM responses WHERE tenant = ? AND id = ? AND expires_at > ?",
                    (tenant, response_id, time.time()),
                )
                return cursor.rowcount > 0

        return await self._run(remove)

    async def aclose(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await asyncio.get_running_loop().run_in_executor(self._thread, db.close)
        self._thread.shutdown(wait=True)


def _dumps(value: object) -> str:
    return json.dumps(value, separators=(",", ":"))
