"""Stored responses on a Redis server, so that any replica continues a conversation another one started.

One key a response, ``moa:response:<tenant>:<id>``, holding the record as one JSON document with the TTL as
its expiry (``SET ... PX``): a write is one command, whole or not at all; a read is one ``GET``, whatever the
length of the chain behind it. The tenant in the key keeps another key's ids out of reach. A server that does
not answer within ``SOCKET_TIMEOUT_S`` is ``StoreUnavailable`` (503), never a hang.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from moa.server.errors import StoreUnavailable
from moa.server.responses.store.base import StoredResponse

if TYPE_CHECKING:
    from redis.asyncio import Redis

#: seconds a command may take (connect, send, answer)
SOCKET_TIMEOUT_S = 2.0
PREFIX = "moa:response:"


def _key(tenant: str, response_id: str) -> str:
    return f"{PREFIX}{tenant or '-'}:{response_id}"


class RedisStore:
    def __init__(self, url: str, ttl_s: float) -> None:
        self.url = url
        self.ttl_s = ttl_s
        self._redis: Redis | None = None

    def __repr__(self) -> str:
        return "RedisStore()"  # the URL may hold a password

    async def open(self) -> None:
        from redis.asyncio import Redis

        self._redis = Redis.from_url(self.url, socket_timeout=SOCKET_TIMEOUT_S, socket_connect_timeout=SOCKET_TIMEOUT_S)

    def _client(self) -> Redis:
        if self._redis is None:
            raise StoreUnavailable("the response store is not open")
        return self._redis

    async def _do(self, command: str, *args: Any, **kwargs: Any) -> Any:
        from redis.exceptions import RedisError

        try:
            return await getattr(self._client(), command)(*args, **kwargs)
        except (RedisError, OSError) as e:
            raise StoreUnavailable(f"the response store (Redis) did not answer: {type(e).__name__}") from None

    async def put(self, record: StoredResponse) -> None:
        await self._do("set", _key(record.tenant, record.id), record.to_json(), px=max(1, int(self.ttl_s * 1000)))

    async def get(self, tenant: str, response_id: str) -> StoredResponse | None:
        raw = await self._do("get", _key(tenant, response_id))
        return None if raw is None else StoredResponse.from_json(raw)

    async def delete(self, tenant: str, response_id: str) -> bool:
        return bool(await self._do("delete", _key(tenant, response_id)))

    async def aclose(self) -> None:
        client, self._redis = self._redis, None
        if client is not None:
            await client.aclose()
