"""``POST /v1/responses`` over a real ``moa serve`` with the official client: the response object, its errors and
its streamed events, against the scripted upstream."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import openai
import pytest
from openai.types.responses import (
    ResponseCompletedEvent,
    ResponseContentPartAddedEvent,
    ResponseContentPartDoneEvent,
    ResponseCreatedEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseOutputItemDoneEvent,
    ResponseTextDeltaEvent,
    ResponseTextDoneEvent,
)

from tests.support.scripted_server import Raw, ScriptedServer
from tests.support.server_harness import ServeProcess, ensemble, metric_samples, moa_serve, wait_until


@pytest.fixture(scope="module")
def serve(upstream_sync_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServeProcess]:
    directory = tmp_path_factory.mktemp("responses-api")
    configs = [
        ensemble(upstream_sync_url, "fast", [["p1", "p2"]], "agg"),
        ensemble(upstream_sync_url, "slow", [["s1"]], "sagg"),
        ensemble(upstream_sync_url, "dev", [["dv1"]], "dvagg", backend={"developer_role": True}),
        ensemble(upstream_sync_url, "text-only", [["tx1"]], "txagg", backend={"input": ["text"]}),
    ]
    store = f"sqlite:///{directory / 'responses.sqlite3'}"
    with moa_serve(directory, configs, "--response-store", store) as server:
        yield server


@pytest.fixture
def client(serve: ServeProcess) -> Iterator[openai.OpenAI]:
    with serve.client(timeout=30) as c:
        yield c


def post(serve: ServeProcess, body: object, path: str = "/v1/responses") -> tuple[int, dict[str, object]]:
    raw = json.dumps(body).encode()
    status, _, data = serve.request("POST", path, raw, {"Content-Type": "application/json"})
    return status, json.loads(data)


def test_a_string_input_runs_the_ensemble_and_returns_the_response_object(
    client: openai.OpenAI, upstream_thread: ScriptedServer
) -> None:
    upstream_thread.script("p1", answer="proposal one")
    upstream_thread.script("agg", answer="four it is")
    response = client.responses.create(model="fast", input="What is 2 + 2?", instructions="Be brief.")
    assert response.output_text == "four it is"
    assert response.id.startswith("resp_") and response.object == "response" and response.model == "fast"
    assert response.status == "completed" and response.error is None and response.incomplete_details is None
    (message,) = response.output
    assert message.type == "message" and message.role == "assistant" and message.id.startswith("msg_")
    assert [(p.type, p.text) for p in message.content] == [("output_text", "four it is")]
    # three calls of 10 prompt tokens each; completions 2 + 3 + 3 words
    usage = response.usage
    assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (30, 8, 38)
    assert usage.input_tokens_details.cached_tokens == 0
    (agg,) = upstream_thread.for_model("agg")
    assert "proposal one" in agg.prompt_text
    (p1,) = upstream_thread.for_model("p1")
    assert p1.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "What is 2 + 2?"},
    ]  # the same request object as chat completions: instructions as the system message


def test_items_with_parts_and_roles_translate_into_the_conversation(
    client: openai.OpenAI, upstream_thread: ScriptedServer
) -> None:
    items = [
        {"role": "developer", "content": "Answer in French."},
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "a"}, {"type": "input_text", "text": "b"}],
        },
        {"type": "message", "role": "assistant", "content": [{"type": "output_text", "text": "ok", "annotations": []}]},
        {"role": "user", "content": "go on"},
    ]
    client.responses.create(model="fast", input=items, temperature=0.5, top_p=0.9, max_output_tokens=64)
    (p1,) = upstream_thread.for_model("p1")
    assert p1.messages == [
        {"role": "system", "content": "Answer in French."},
        {"role": "user", "content": "a\nb"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": "go on"},
    ]
    (agg,) = upstream_thread.for_model("agg")
    assert (agg.body["temperature"], agg.body["top_p"], agg.body["max_tokens"]) == (0.5, 0.9, 64)


def test_metadata_and_settings_are_echoed(client: openai.OpenAI, upstream_thread: ScriptedServer) -> None:
    response = client.responses.create(model="fast", input="hi", metadata={"ticket": "42"}, temperature=0.3)
    assert response.metadata == {"ticket": "42"} and response.temperature == 0.3
    assert response.store is True and response.previous_response_id is None


def test_an_answer_cut_at_its_token_cap_is_incomplete(client: openai.OpenAI, upstream_thread: ScriptedServer) -> None:
    body = {
        "id": "x",
        "object": "chat.completion",
        "created": 0,
        "model": "agg",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": "cut sh"}, "finish_reason": "length"}],
        "usage": {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7},
    }
    upstream_thread.script("agg", faults=[Raw(json.dumps(body))])
    response = client.responses.create(model="fast", input="hi", max_output_tokens=2)
    assert response.status == "incomplete"
    assert response.incomplete_details is not None and response.incomplete_details.reason == "max_output_tokens"
    assert response.output_text == "cut sh" and response.output[0].status == "incomplete"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"model": "fast", "input": "hi", "temprature": 1}, "temprature"),
        ({"model": "fast", "input": "hi", "temperature": 3}, "temperature"),
        ({"model": "fast", "input": "hi", "max_output_tokens": 0}, "max_output_tokens"),
        ({"model": "fast"}, "input"),
        ({"model": "fast", "input": []}, "input"),
        ({"model": "fast", "input": [{"role": "wizard", "content": "x"}]}, "input[0].role"),
        (
            {"model": "fast", "input": [{"role": "user", "content": [{"type": "input_txt", "text": "x"}]}]},
            "input[0].content[0].type",
        ),
        (
            {"model": "fast", "input": [{"role": "user", "content": "x"}, {"role": "assistant", "content": "y"}]},
            "input[1].role",
        ),
        ({"model": "fast", "input": [{"type": "bogus"}]}, "input[0].type"),
        ({"model": "fast", "input": "hi", "stream_options": {"include_progress": True}}, "stream_options"),
        ({"model": "fast", "input": "hi", "store": "yes"}, "store"),
        ({"model": "fast", "input": "hi", "metadata": {"k": 1}}, "metadata.k"),
        ({"model": "fast", "input": "hi", "moa_deadline_s": -1}, "moa_deadline_s"),
    ],
)
def test_bad_fields_are_400_naming_the_field(serve: ServeProcess, body: dict[str, object], param: str) -> None:
    status, answer = post(serve, body)
    assert status == 400, answer
    error = answer["error"]
    assert isinstance(error, dict) and error["type"] == "invalid_request_error"
    assert error["param"] == param, error


def test_fields_moa_cannot_honour_yet_are_refused_by_name_unless_neutral(
    serve: ServeProcess, client: openai.OpenAI
) -> None:
    refused = (("tools", [{"type": "web_search"}], "tools[0].type"), ("reasoning", {"effort": "high"}, "reasoning"))
    for field, value, param in (*refused, ("background", True, "background")):
        status, answer = post(serve, {"model": "fast", "input": "hi", field: value})
        assert status == 400 and answer["error"]["param"] == param, answer  # type: ignore[index]
    image = {"type": "input_image", "file_id": "file_1"}  # moa has no Files API
    status, answer = post(serve, {"model": "fast", "input": [{"role": "user", "content": [image]}]})
    assert status == 400 and answer["error"]["param"] == "input[0].content[0].file_id", answer  # type: ignore[index]
    assert "image_url" in answer["error"]["message"]  # type: ignore[index]
    reasoning = {"type": "reasoning", "id": "rs_1", "summary": []}
    status, answer = post(serve, {"model": "fast", "input": [reasoning, {"role": "user", "content": "x"}]})
    assert status == 400 and answer["error"]["param"] == "input[0].type", answer  # type: ignore[index]
    neutral = client.responses.create(
        model="fast", input="hi", tools=[], tool_choice="auto", text={"format": {"type": "text"}}
    )
    assert neutral.status == "completed"


def test_an_unknown_model_is_404_and_an_unknown_previous_response_is_404_naming_it(serve: ServeProcess) -> None:
    status, answer = post(serve, {"model": "nope", "input": "hi"})
    assert status == 404 and answer["error"]["code"] == "model_not_found"  # type: ignore[index]
    status, answer = post(serve, {"model": "fast", "input": "hi", "previous_response_id": "resp_nothing"})
    assert status == 404 and answer["error"]["param"] == "previous_response_id", answer  # type: ignore[index]


def test_a_failed_ensemble_is_an_openai_error(client: openai.OpenAI, upstream_thread: ScriptedServer) -> None:
    upstream_thread.script("agg", faults=["400"])
    with pytest.raises(openai.APIStatusError) as e:
        client.responses.create(model="fast", input="hi")
    assert e.value.status_code == 502 and e.value.body["code"] == "upstream_failed"  # type: ignore[index]


def test_moa_extensions_are_taken_as_on_chat_completions(
    client: openai.OpenAI, upstream_thread: ScriptedServer
) -> None:
    response = client.responses.create(model="fast", input="hi", extra_body={"moa_trace": True})
    (trace,) = (response.model_extra or {})["moa_trace"]
    assert sorted(c["agent"] for c in trace["calls"]) == ["aggregator", "p1", "p2"]
    assert {p["agent"] for p in trace["proposals"]} == {"p1", "p2"}


# ---- streaming ---------------------------------------------------------------------------------------------

ORDER = [
    ResponseCreatedEvent,
    ResponseInProgressEvent,
    ResponseOutputItemAddedEvent,
    ResponseContentPartAddedEvent,
]
CLOSING = [ResponseTextDoneEvent, ResponseContentPartDoneEvent, ResponseOutputItemDoneEvent, ResponseCompletedEvent]


def test_a_stream_sends_the_semantic_events_in_order(client: openai.OpenAI, upstream_thread: ScriptedServer) -> None:
    upstream_thread.script("agg", answer="streamed words arrive")
    with client.responses.stream(model="fast", input="hi") as stream:
        events = list(stream)
        final = stream.get_final_response()
    kinds = [type(e).__name__ for e in events]  # the client's own event classes, as it parsed them
    assert kinds[:4] == [k.__name__ for k in ORDER] and kinds[-4:] == [k.__name__ for k in CLOSING]
    assert set(kinds[4:-4]) == {ResponseTextDeltaEvent.__name__}
    assert [e.delta for e in events[4:-4]] == ["streamed", " words", " arrive"]  # type: ignore[attr-defined]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert len({e.response.id for e in events if hasattr(e, "response")}) == 1  # type: ignore[attr-defined]
    assert final.output_text == "streamed words arrive" and final.status == "completed"
    assert final.usage is not None and final.usage.output_tokens == 2 * 3 + 3
    done = events[-1]
    assert isinstance(done, ResponseCompletedEvent) and done.response.output_text == "streamed words arrive"


def test_stream_true_on_create_gives_the_same_events(client: openai.OpenAI, upstream_thread: ScriptedServer) -> None:
    events = list(client.responses.create(model="fast", input="hi", stream=True))
    assert [e.type for e in events][:2] == ["response.created", "response.in_progress"]
    assert events[-1].type == "response.completed"


def test_a_stream_cut_at_its_cap_ends_with_response_incomplete(
    serve: ServeProcess, upstream_thread: ScriptedServer
) -> None:
    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "agg"}
    lines = [
        {**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": "cut"}, "finish_reason": None}]},
        {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "length"}]},
    ]
    sse = "".join(f"data: {json.dumps(c)}\n\n" for c in lines) + "data: [DONE]\n\n"
    upstream_thread.script("agg", faults=[Raw(sse, content_type="text/event-stream")])
    with serve.client(timeout=30) as c:
        events = list(c.responses.create(model="fast", input="hi", stream=True, max_output_tokens=1))
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"  # type: ignore[union-attr]


def test_a_failure_after_the_stream_began_is_response_failed(
    serve: ServeProcess, upstream_thread: ScriptedServer
) -> None:
    chunk = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "agg"}
    first = {**chunk, "choices": [{"index": 0, "delta": {"content": "half"}, "finish_reason": None}]}
    sse = f"data: {json.dumps(first)}\n\ndata: {{broken\n\n"
    upstream_thread.script("agg", faults=[Raw(sse, content_type="text/event-stream")])
    with serve.client(timeout=30) as c:
        events = list(c.responses.create(model="fast", input="hi", stream=True))
    assert [e.type for e in events][-2:] == ["response.output_text.delta", "response.failed"]
    failed = events[-1].response  # type: ignore[union-attr]
    assert failed.status == "failed" and failed.error is not None and failed.error.code == "upstream_failed"
    assert [e.sequence_number for e in events] == list(range(len(events)))


def test_progress_events_are_their_own_type_when_asked(serve: ServeProcess, upstream_thread: ScriptedServer) -> None:
    with serve.client(timeout=30) as c:
        events = list(
            c.responses.create(
                model="fast", input="hi", stream=True, extra_body={"stream_options": {"include_progress": True}}
            )
        )
    kinds = [e.type for e in events]
    assert kinds[:2] == ["response.created", "response.in_progress"] and kinds[-1] == "response.completed"
    progress = [e for e in events if e.type == "moa.progress"]
    assert progress and kinds.index("moa.progress") < kinds.index("response.output_item.added")
    assert {"kind", "agent", "layer"} <= set((progress[0].model_extra or {})["progress"])


def test_a_client_that_leaves_mid_stream_cancels_the_ensembles_calls(
    serve: ServeProcess, upstream_thread: ScriptedServer
) -> None:
    upstream_thread.script("sagg", answer=" ".join(f"w{i}" for i in range(400)), latency_s=2.0)
    body = json.dumps({"model": "slow", "input": "hi", "stream": True}).encode()
    head = (
        "POST /v1/responses HTTP/1.1\r\nHost: moa\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    sock = socket.create_connection((serve.host, serve.port), timeout=10)
    sock.sendall(head.encode() + body)
    seen = b""
    while b"response.output_text.delta" not in seen:
        seen += sock.recv(65536)
    sock.close()
    wait_until(lambda: [r.outcome for r in upstream_thread.for_model("sagg")] == ["cancelled"], 10, "cancelled")
    status, _, text = serve.request("GET", "/metrics")
    wait_until(
        lambda: (
            metric_samples(serve.request("GET", "/metrics")[2].decode()).get(
                'moa_requests_total{ensemble="slow",status="499"}'
            )
            == 1
        ),
        10,
        "counted 499",
    )
    assert status == 200 and "Traceback" not in serve.stderr


def test_at_the_drain_timeout_a_stream_ends_with_response_failed_and_a_whole_request_gets_503(
    upstream_sync_url: str, upstream_thread: ScriptedServer, tmp_path: Path
) -> None:
    upstream_thread.script("dagg", answer=" ".join(f"w{i}" for i in range(400)), latency_s=1.0)
    upstream_thread.script("hagg", latency_s=30)
    configs = [
        ensemble(upstream_sync_url, "streamed", [["d1"]], "dagg"),
        ensemble(upstream_sync_url, "held", [["d2"]], "hagg"),
    ]
    store = ("--response-store", f"sqlite:///{tmp_path / 'r.sqlite3'}", "--drain-timeout", "1")
    with moa_serve(tmp_path, configs, *store) as server:
        streamed = socket.create_connection((server.host, server.port), timeout=15)
        streamed.sendall(raw_request({"model": "streamed", "input": "hi", "stream": True}))
        whole = socket.create_connection((server.host, server.port), timeout=15)
        whole.sendall(raw_request({"model": "held", "input": "hi"}))
        seen = b""
        while b"response.output_text.delta" not in seen:
            seen += streamed.recv(65536)
        wait_until(lambda: len(upstream_thread.for_model("hagg")) == 1, 5, "the whole request at its aggregator")
        server.proc.send_signal(signal.SIGTERM)
        seen += read_all(streamed)
        answer = read_all(whole)
        assert server.proc.wait(timeout=10) == 0
    events = [json.loads(line[6:]) for line in seen.decode().split("\n") if line.startswith("data: ")]
    assert events[-1]["type"] == "response.failed"
    assert events[-1]["response"]["error"]["code"] == "shutting_down"
    assert [e["sequence_number"] for e in events] == list(range(len(events)))
    assert answer.startswith(b"HTTP/1.1 503") and b'"shutting_down"' in answer
    assert "Traceback" not in server.output


def raw_request(body: dict[str, object]) -> bytes:
    data = json.dumps(body).encode()
    head = f"POST /v1/responses HTTP/1.1\r\nHost: moa\r\nContent-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n"
    return head.encode() + data


def read_all(sock: socket.socket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_an_input_image_reaches_the_upstream_as_a_chat_image_part(
    client: openai.OpenAI, upstream_thread: ScriptedServer
) -> None:
    url = "data:image/png;base64,iVBORw0KGgo="
    content = [
        {"type": "input_text", "text": "What is in this picture?"},
        {"type": "input_image", "image_url": url, "detail": "low"},
    ]
    answer = client.responses.create(
        model="fast",
        input=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": content}],  # type: ignore[list-item]
        store=False,
    )
    assert answer.status == "completed"
    for request in upstream_thread.requests:
        user = next(m for m in request.messages if m["role"] == "user")
        assert user["content"] == [
            {"type": "text", "text": "What is in this picture?"},
            {"type": "image_url", "image_url": {"url": url, "detail": "low"}},
        ], request.model
        assert any(m["role"] == "system" and "Be brief." in str(m["content"]) for m in request.messages)


def test_a_developer_item_is_a_developer_turn_where_the_backend_keeps_them(
    client: openai.OpenAI, upstream_thread: ScriptedServer
) -> None:
    """As on chat completions: a backend with developer_role true gets the turn as developer (others as system)."""
    answer = client.responses.create(
        model="dev",
        input=[{"role": "developer", "content": "Be brief."}, {"role": "user", "content": "Hi?"}],
        store=False,
    )
    assert answer.status == "completed"
    for request in upstream_thread.requests:
        assert {"role": "developer", "content": "Be brief."} in request.messages, request.model


def test_an_image_no_proposer_reads_is_a_400_naming_the_input_part(
    serve: ServeProcess, upstream_thread: ScriptedServer
) -> None:
    image = {"type": "input_image", "image_url": "data:image/png;base64,iVBORw0KGgo="}
    body = {
        "model": "text-only",
        "instructions": "Be brief.",  # the chat request's messages[0]: the path must still name input[1]
        "input": [
            {"role": "user", "content": "Hello."},
            {"role": "user", "content": [{"type": "input_text", "text": "And this?"}, image]},
        ],
    }
    status, answer = post(serve, body)
    assert status == 400, answer
    error = answer["error"]
    assert isinstance(error, dict) and error["param"] == "input[1].content[1]", error
    assert "no proposer of layer 1 reads this content part" in str(error["message"])
    assert "messages[" not in str(error["message"])
    assert upstream_thread.requests == []
