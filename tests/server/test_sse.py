"""The event-stream parser against the WHATWG rules, with the stream cut at every position."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from moa.config import OpenAIBackendConfig
from moa.errors import MalformedResponseError
from moa.types import Message, SamplingParams
from proposers.openai_http import OpenAIProposer
from proposers.sse import iter_sse_data
from tests.support.scripted_server import Raw, ScriptedServer


def reference(stream: bytes) -> list[str]:
    """The spec's algorithm, one character at a time (slow and plain, to check the real parser against)."""
    text = stream.decode("utf-8")
    if text.startswith("\ufeff"):
        text = text[1:]
    lines, line, i = [], "", 0
    while i < len(text):
        c = text[i]
        if c in "\r\n":
            lines.append(line)
            line = ""
            if c == "\r" and text[i + 1 : i + 2] == "\n":
                i += 1
        else:
            line += c
        i += 1
    events, buffer = [], ""  # the unterminated last line (``line``) is dropped, as is an unfinished event
    for line in lines:
        if line == "":
            if buffer:
                events.append(buffer[:-1])
            buffer = ""
            continue
        if line.startswith(":"):
            continue
        field, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if field == "data":
            buffer += value + "\n"
    return events


def parse(pieces: list[bytes]) -> list[str]:
    async def chunks() -> AsyncIterator[bytes]:
        for piece in pieces:
            yield piece

    async def collect() -> list[str]:
        return [d async for d in iter_sse_data(chunks())]

    return asyncio.run(collect())


def cuts(stream: bytes, positions: list[int]) -> list[bytes]:
    edges = [0, *sorted(positions), len(stream)]
    return [stream[a:b] for a, b in zip(edges, edges[1:], strict=False)]


EXAMPLE = (
    b"\xef\xbb\xbf: a comment\r\n"
    b"data: one\r"
    b"data:two\r\n"
    b"data\n"
    b"\r"
    b"event: ping\n"
    b"id: 7\n"
    b"\n"
    b"data:  two spaces\n"
    b"database: not data\n"
    b"\r\n"
    b"data: caf\xc3\xa9 \xe2\x82\xac\n"
    b"\n"
    b"data: cut off"
)
EXPECTED = ["one\ntwo\n", " two spaces", "caf\u00e9 \u20ac"]


def test_the_rules_on_one_stream() -> None:
    assert reference(EXAMPLE) == EXPECTED
    assert parse([EXAMPLE]) == EXPECTED


def test_every_single_cut_and_every_pair_of_cuts() -> None:
    n = len(EXAMPLE)
    for i in range(n + 1):
        assert parse(cuts(EXAMPLE, [i])) == EXPECTED, i
    for i in range(0, n + 1, 3):
        for j in range(i, n + 1):
            assert parse(cuts(EXAMPLE, [i, j])) == EXPECTED, (i, j)


def test_one_byte_at_a_time() -> None:
    assert parse([EXAMPLE[i : i + 1] for i in range(len(EXAMPLE))]) == EXPECTED


PIECES = ["data", "data:", "data: ", ":", " ", "x", "y", "\r", "\n", "\r\n", "event:e", "\u00e9", "\ufeff", "id"]


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.sampled_from(PIECES), max_size=40),
    bom=st.booleans(),
    positions=st.lists(st.integers(min_value=0, max_value=400), max_size=6),
)
def test_any_stream_cut_anywhere_parses_as_the_spec_says(parts: list[str], bom: bool, positions: list[int]) -> None:
    stream = ("\ufeff" if bom else "").encode() + "".join(parts).encode()
    positions = [p % (len(stream) + 1) for p in positions]
    assert parse(cuts(stream, positions)) == reference(stream)


def test_a_cr_and_its_lf_in_different_chunks_end_one_line() -> None:
    assert parse([b"data: a\r", b"\ndata: b\r", b"\n\r", b"\n"]) == ["a\nb"]
    assert parse([b"data: a\r", b"\r", b"data: b\r\r"]) == ["a", "b"]


def test_only_one_leading_bom_is_dropped() -> None:
    assert parse([b"\xef\xbb", b"\xbfdata: a\n\n"]) == ["a"]
    assert parse([b"\xef\xbb\xbf\xef\xbb\xbfdata: a\n\ndata: b\n\n"]) == ["b"]  # the second BOM is in the name


def test_events_without_data_are_not_dispatched() -> None:
    assert parse([b": ping\n\nevent: x\n\nid: 1\n\n\n\ndata: y\n\n"]) == ["y"]
    assert parse([b"data:\n\n"]) == [""]  # a data line, empty: the buffer is "\n", so it is dispatched


@pytest.mark.parametrize(
    "pieces",
    [[b"data: \xff\n\n"], [b"data: ok\n\n", b"data: \xc3\x28\n\n"], [b"data: caf\xc3"], [b"data: caf\xc3", b"\n\n"]],
)
def test_invalid_utf8_is_a_malformed_response(pieces: list[bytes]) -> None:
    with pytest.raises(MalformedResponseError, match="event stream: invalid UTF-8"):
        parse(pieces)


async def test_a_stream_with_cr_line_ends_end_to_end(upstream: ScriptedServer) -> None:
    chunk = '{"choices": [{"index": 0, "delta": {"content": "%s"}, "finish_reason": %s}]}'
    events = "".join(
        f"data: {chunk % (text, reason)}\r\r"
        for text, reason in (("Hello", "null"), (" there", "null"), ("", '"stop"'))
    )
    usage = '{"choices": [], "usage": {"prompt_tokens": 3, "completion_tokens": 2}}'
    body = "\ufeff: hi\r" + events + f"data: {usage}\r\rdata: [DONE]\r\r"
    upstream.script("m", faults=[Raw(body, content_type="text/event-stream")])
    proposer = OpenAIProposer("up", OpenAIBackendConfig(type="openai", base_url=upstream.base_url, model="m"))
    try:
        deltas = [d async for d in proposer.stream([Message("user", "hi")], SamplingParams())]
    finally:
        await proposer.aclose()
    assert "".join(d.content for d in deltas) == "Hello there"
    assert deltas[-1].finish_reason == "stop" and deltas[-1].usage is not None
    assert (deltas[-1].usage.prompt_tokens, deltas[-1].usage.completion_tokens) == (3, 2)


async def test_invalid_utf8_from_an_upstream_names_the_backend(upstream: ScriptedServer) -> None:
    upstream.script("m", faults=[Raw(b"data: \xff\xfe\n\n", content_type="text/event-stream")])
    proposer = OpenAIProposer("up", OpenAIBackendConfig(type="openai", base_url=upstream.base_url, model="m"))
    try:
        with pytest.raises(MalformedResponseError, match="up: event stream: invalid UTF-8") as info:
            [d async for d in proposer.stream([Message("user", "hi")], SamplingParams())]
    finally:
        await proposer.aclose()
    assert info.value.backend == "up" and info.value.retryable
