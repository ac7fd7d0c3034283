"""The response stores on their own: SQLite (a real file) and Redis (a real redis-server), the same behaviour."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from moa.errors import ConfigError
from moa.server.errors import StoreUnavailable
from moa.server.responses.store import ResponseStore, StoredResponse, open_store, parse_ttl
from moa.server.responses.store.base import sqlite_path
from tests.support.redis_server import RedisServer


def record(rid: str, tenant: str = "", turns: int = 1) -> StoredResponse:
    history = [{"id": f"msg_{i}", "type": "message", "role": "user", "content": []} for i in range(turns)]
    return StoredResponse(rid, tenant, 1.0, {"id": rid, "object": "response"}, history[-1:], history)


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("redis"))
    server.start()
    yield server
    server.stop()


@pytest.fixture(params=["sqlite", "redis"])
async def store(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[ResponseStore]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'r.sqlite3'}"
    else:
        server: RedisServer = request.getfixturevalue("redis_server")
        with server.client() as c:
            c.flushdb()
        url = server.url
    s = open_store(url, ttl_s=0.5)
    await s.open()
    yield s
    await s.aclose()


async def test_a_record_is_read_back_whole_by_its_tenant_only(store: ResponseStore) -> None:
    await store.put(record("resp_a", "t1", turns=3))
    got = await store.get("t1", "resp_a")
    assert got == record("resp_a", "t1", turns=3)
    assert await store.get("t2", "resp_a") is None  # another tenant: as if it never was
    assert await store.get("", "resp_a") is None
    assert await store.delete("t2", "resp_a") is False
    assert await store.get("t1", "resp_a") is not None
    assert await store.delete("t1", "resp_a") is True
    assert await store.get("t1", "resp_a") is None and await store.delete("t1", "resp_a") is False


async def test_records_expire_after_the_ttl(store: ResponseStore) -> None:
    await store.put(record("resp_old"))
    assert await store.get("", "resp_old") is not None
    await asyncio.sleep(0.7)
    assert await store.get("", "resp_old") is None


async def test_sqlite_is_wal_with_the_schema_versioned(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "r.sqlite3"  # its folder is made
    s = open_store(f"sqlite:///{path}", ttl_s=60)
    await s.open()
    await s.put(record("resp_1"))
    await s.aclose()
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert db.execute("PRAGMA user_version").fetchone() == (1,)
        db.execute("PRAGMA user_version = 7")
    newer = open_store(f"sqlite:///{path}", ttl_s=60)
    with pytest.raises(ConfigError, match="schema version 7; this moa reads version 1") as e:
        await newer.open()
    assert e.value.path == "--response-store"


async def test_an_unreachable_redis_is_store_unavailable_not_a_hang(tmp_path: Path) -> None:
    server = RedisServer(tmp_path)  # never started: nothing listens on its port
    s = open_store(server.url, ttl_s=60)
    await s.open()
    with pytest.raises(StoreUnavailable, match="did not answer"):
        await asyncio.wait_for(s.get("", "resp_x"), timeout=10)
    await s.aclose()


def test_store_urls_and_ttls_are_checked_naming_the_option() -> None:
    assert sqlite_path("sqlite:///var/lib/moa/r.db") == Path("/var/lib/moa/r.db")
    assert sqlite_path("sqlite:////var/lib/moa/r.db") == Path("/var/lib/moa/r.db")
    for bad in ("sqlite://host/r.db", "sqlite:///", "postgres://x", "r.db"):
        with pytest.raises(ConfigError) as e:
            open_store(bad, 60)
        assert e.value.path == "--response-store"
    assert (parse_ttl("30d"), parse_ttl("12h"), parse_ttl("90"), parse_ttl("1.5m")) == (2592000, 43200, 90, 90)
    for bad in ("0", "-1", "soon", "1w", "inf"):
        with pytest.raises(ConfigError) as e:
            parse_ttl(bad)
        assert e.value.path == "--response-ttl"
