"""Server-sent events: split a byte stream into the ``data`` payloads of its events."""

from __future__ import annotations

from collections.abc import AsyncIterable, AsyncIterator


def _data_of(raw: bytes) -> str | None:
    """The value of a ``data`` line; ``None`` for comments and other fields."""
    line = raw.decode("utf-8").rstrip("\r")
    field, _, value = line.partition(":")
    if field != "data" or line.startswith(":"):
        return None
    return value[1:] if value.startswith(" ") else value


async def iter_sse_data(chunks: AsyncIterable[bytes]) -> AsyncIterator[str]:
    """Yield the data of each event (multi-line data joined with newlines); comments and other fields skipped.

    ``chunks`` may cut the stream anywhere (aiohttp's ``iter_any()``: whatever arrived): taking what arrived in
    one piece instead of line by line halves the reader's work per streamed token.
    """
    data: list[str] = []
    pending = b""
    async for chunk in chunks:
        lines = (pending + chunk).split(b"\n")
        pending = lines.pop()  # an unfinished line waits for the next chunk
        for raw in lines:
            if raw.strip(b"\r"):
                if (value := _data_of(raw)) is not None:
                    data.append(value)
            elif data:  # a blank line ends the event
                yield "\n".join(data)
                data = []
    if pending and (value := _data_of(pending)) is not None:
        data.append(value)
    if data:
        yield "\n".join(data)
