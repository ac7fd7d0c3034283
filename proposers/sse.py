"""Server-sent events: split a byte stream into the ``data`` payloads of its events."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator


async def iter_sse_data(lines: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """Yield the data of each event (multi-line data joined with newlines); comments and other fields skipped.

    ``lines`` yields raw lines as aiohttp's ``StreamReader`` does (each ending in ``\\n``).
    """
    data: list[str] = []
    async for raw in lines:
        line = raw.decode("utf-8").rstrip("\r\n")
        if not line:
            if data:
                yield "\n".join(data)
                data = []
            continue
        if line.startswith(":"):
            continue
        field, _, value = line.partition(":")
        if field == "data":
            data.append(value[1:] if value.startswith(" ") else value)
    if data:
        yield "\n".join(data)
