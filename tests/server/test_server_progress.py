"""``stream_options.include_progress``: ``moa.progress`` chunks from a real ``moa serve``, read by the official
openai client, LangChain (langchain-openai) and litellm; without the option the stream is unchanged."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.support.scripted_server import ScriptedServer
from tests.support.server_harness import ServeProcess, ensemble, moa_serve

USER = [{"role": "user", "content": "What is 2 + 2?"}]
PROGRESS = {"include_progress": True}


@pytest.fixture(scope="module")
def serve(upstream_sync_url: str, tmp_path_factory) -> Iterator[ServeProcess]:
    configs = [ensemble(upstream_sync_url, "fast", [["p1", "p2"]], "agg")]
    with moa_serve(tmp_path_factory.mktemp("serve-progress"), configs) as server:
        yield server


@pytest.fixture
def client(serve: ServeProcess) -> Iterator[openai.OpenAI]:
    with serve.client(timeout=30) as c:
        yield c


def _events(raw: bytes) -> list[Any]:
    """The ``data:`` payloads of an SSE body, decoded (``[DONE]`` kept as the string)."""
    out: list[Any] = []
    for block in raw.decode().split("\n\n"):
        if block.startswith("data: "):
            data = block.removeprefix("data: ")
            out.append(data if data == "[DONE]" else json.loads(data))
    return out


def test_the_openai_client_reads_progress_chunks_before_the_tokens(
    client: openai.OpenAI, upstream_thread: ScriptedServer
) -> None:
    upstream_thread.script("agg", answer="four it is")
    chunks = list(client.chat.completions.create(model="fast", messages=USER, stream=True, stream_options=PROGRESS))
    progress = [c for c in chunks if c.object == "moa.progress"]
    assert progress and all(c.choices == [] for c in progress)
    events = [c.model_dump()["moa_progress"] for c in progress]
    kinds = [(e["kind"], e["layer"], e["agent"]) for e in events]
    assert kinds[:2] == [("started", 1, "p1"), ("started", 1, "p2")]
    assert ("layer_done", 1, "") in kinds and kinds[-1] == ("finished", 2, "aggregator")
    assert all(e["index"] == 0 and e["elapsed_s"] >= 0 for e in events)
    first_token = next(i for i, c in enumerate(chunks) if c.choices and c.choices[0].delta.content)
    before = [c.model_dump()["moa_progress"]["kind"] for c in chunks[:first_token] if c.object == "moa.progress"]
    assert before[-1] == "first_token" and "finished" not in before[-2:]
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "four it is"


def test_without_the_option_the_stream_is_unchanged_byte_for_byte(
    serve: ServeProcess, upstream_thread: ScriptedServer
) -> None:
    upstream_thread.script("agg", answer="four it is")
    status, headers, raw = serve.post_json({"model": "fast", "messages": USER, "stream": True})
    assert status == 200 and headers["content-type"].startswith("text/event-stream")
    first = _events(raw)[0]
    base = {"id": first["id"], "object": "chat.completion.chunk", "created": first["created"], "model": "fast"}

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> str:
        choice = {"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}
        return f"data: {json.dumps({**base, 'choices': [choice]})}\n\n"

    expected = (
        chunk({"role": "assistant", "content": ""})
        + "".join(chunk({"content": piece}) for piece in ["four", " it", " is"])
        + chunk({}, "stop")
        + "data: [DONE]\n\n"
    )
    assert raw.decode() == expected


def test_raw_progress_chunks_come_first_and_name_the_calls(
    serve: ServeProcess, upstream_thread: ScriptedServer
) -> None:
    upstream_thread.script("p2", latency_s=0.3)
    body = {"model": "fast", "messages": USER, "stream": True, "stream_options": {**PROGRESS, "include_usage": True}}
    status, _, raw = serve.post_json(body)
    assert status == 200
    events = _events(raw)
    assert events[-1] == "[DONE]" and events[-2]["usage"]["total_tokens"] > 0  # usage still comes last
    assert events[0]["object"] == "moa.progress" and events[0]["choices"] == []
    assert events[0]["moa_progress"]["kind"] == "started" and events[0]["usage"] is None
    ids = {e["id"] for e in events[:-1]}
    assert len(ids) == 1  # one response: progress chunks carry its id
    p2 = [
        e["moa_progress"] for e in events[:-1] if e["object"] == "moa.progress" and e["moa_progress"]["agent"] == "p2"
    ]
    assert [e["kind"] for e in p2] == ["started", "finished"] and p2[1]["elapsed_s"] >= 0.3
    assert p2[1]["model"] == "p2" and p2[1]["tokens"] > 0 and p2[0]["call"] == p2[1]["call"] > 0


def test_n_choices_tag_their_progress_with_the_choice_index(serve: ServeProcess) -> None:
    body = {"model": "fast", "messages": USER, "stream": True, "n": 2, "stream_options": PROGRESS}
    _, _, raw = serve.post_json(body)
    progress = [e["moa_progress"] for e in _events(raw)[:-1] if e["object"] == "moa.progress"]
    assert {e["index"] for e in progress} == {0, 1}
    for index in (0, 1):
        assert [e["kind"] for e in progress if e["index"] == index].count("started") == 3


def test_a_failure_after_progress_began_is_an_error_event(serve: ServeProcess, upstream_thread: ScriptedServer) -> None:
    upstream_thread.script("p1", faults=["400"])
    upstream_thread.script("p2", faults=["400"])
    _, _, raw = serve.post_json({"model": "fast", "messages": USER, "stream": True, "stream_options": PROGRESS})
    events = _events(raw)
    assert events[0]["object"] == "moa.progress"
    assert events[-1] == "[DONE]" and "error" in events[-2]
    kinds = [e["moa_progress"]["kind"] for e in events[:-2] if e["object"] == "moa.progress"]
    assert kinds.count("failed") == 2
    assert events[-2]["error"]["message"]


def test_a_bad_include_progress_names_the_field(serve: ServeProcess) -> None:
    body = {"model": "fast", "messages": USER, "stream": True, "stream_options": {"include_progress": "yes"}}
    status, _, raw = serve.post_json(body)
    assert status == 400 and "stream_options.include_progress" in json.loads(raw)["error"]["message"]


def test_langchain_parses_the_extended_stream(serve: ServeProcess, upstream_thread: ScriptedServer) -> None:
    from langchain_openai import ChatOpenAI

    upstream_thread.script("agg", answer="four it is")
    llm = ChatOpenAI(
        base_url=serve.base_url, api_key="unused", model="fast", max_retries=0, extra_body={"stream_options": PROGRESS}
    )
    chunks = list(llm.stream("What is 2 + 2?"))
    assert "".join(str(c.content) for c in chunks) == "four it is"
    assert len(chunks) > 3 + 8  # the progress chunks came through too, as empty messages


def test_litellm_parses_the_extended_stream(serve: ServeProcess, upstream_thread: ScriptedServer) -> None:
    os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no network: the bundled cost map
    import litellm

    upstream_thread.script("agg", answer="four it is")
    sent: list[dict[str, Any]] = []

    def record(request: httpx.Request) -> None:
        sent.append(json.loads(request.content))

    with openai.OpenAI(
        base_url=serve.base_url,
        api_key="unused",
        max_retries=0,
        http_client=httpx.Client(event_hooks={"request": [record]}),
    ) as oc:
        stream = litellm.completion(
            model="openai/fast", messages=USER, stream=True, client=oc, extra_body={"stream_options": PROGRESS}
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    assert text == "four it is"
    assert sent[0]["stream_options"]["include_progress"] is True  # the option reached the server


def test_bench_progress_prints_and_writes_the_first_progress_figure(tmp_path) -> None:
    out = tmp_path / "progress.json"
    command = [sys.executable, "-m", "benchmarks.bench_progress", "--requests", "2", "--width", "2", "--json", str(out)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "first moa.progress chunk at the client" in done.stdout
    figures = json.loads(out.read_text())["figures"]
    assert 0 < figures["first_progress_p50_ms"] <= figures["first_progress_p95_ms"]
    assert figures["ttft_with_progress_p50_s"] > 0 and figures["ttft_without_progress_p50_s"] > 0
