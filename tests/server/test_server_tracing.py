"""``moa serve`` exports its spans over OTLP/HTTP to a real receiver (``tests/support/otlp_receiver.py``, decoding
the protobuf export requests), configured by the standard environment only; it joins the client's W3C
``traceparent`` and every upstream request carries its call's, so an upstream that traces nests under moa."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.otlp_receiver import OTLPReceiver, ReceivedSpan
from tests.support.scripted_server import ScriptedServer
from tests.support.server_harness import ensemble, moa_serve, wait_until

CLIENT_TRACE, CLIENT_SPAN = "4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7"
USER = [{"role": "user", "content": "What is 2 + 2?"}]


@pytest.fixture(scope="module")
def receiver() -> Iterator[OTLPReceiver]:
    """An OTLP/HTTP receiver on its own thread and loop (``moa serve`` runs in another process)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    got = OTLPReceiver()
    asyncio.run_coroutine_threadsafe(got.start(), loop).result(timeout=10)
    yield got
    asyncio.run_coroutine_threadsafe(got.stop(), loop).result(timeout=10)
    loop.call_soon_threadsafe(loop.stop)
    thread.join(timeout=10)


def _env(receiver: OTLPReceiver) -> dict[str, str]:
    return {
        "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
        "OTEL_SERVICE_NAME": "moa-under-test",
        "OTEL_BSP_SCHEDULE_DELAY": "20",  # export within milliseconds, not the default 5 s
    }


def _workflow(receiver: OTLPReceiver, name: str, count: int) -> list[ReceivedSpan]:
    wait_until(lambda: len(receiver.named(name)) >= count, timeout=10, what=f"{count} {name} span(s) exported")
    return receiver.named(name)


def _in_trace(receiver: OTLPReceiver, trace_id: str, count: int) -> list[ReceivedSpan]:
    def spans() -> list[ReceivedSpan]:
        return [s for s in receiver.spans if s.trace_id == trace_id]

    wait_until(lambda: len(spans()) >= count, timeout=10, what=f"{count} spans of trace {trace_id}")
    return spans()


def test_serve_joins_the_clients_trace_and_upstream_requests_carry_it(
    tmp_path: Path, upstream_thread: ScriptedServer, receiver: OTLPReceiver
) -> None:
    cfg = ensemble(upstream_thread.base_url, "traced", [["p1", "p2"], ["q1"]], "agg")
    with moa_serve(tmp_path, [cfg], env=_env(receiver)) as server:
        client = server.client()
        traceparent = f"00-{CLIENT_TRACE}-{CLIENT_SPAN}-01"
        answer = client.chat.completions.create(
            model="traced",
            messages=USER,
            extra_headers={"traceparent": traceparent, "tracestate": "vendor=1", "x-request-id": "trace-test-1"},
        )
        assert answer.choices[0].message.content == "agg answer 0"
        spans = _in_trace(receiver, CLIENT_TRACE, 7)  # workflow, 2 layers, aggregate, 4 calls
    [root] = [s for s in spans if s.name == "invoke_workflow traced"]
    assert root.parent_span_id == CLIENT_SPAN  # a child of the client's span
    assert root.resource["service.name"] == "moa-under-test"
    assert root.attributes["gen_ai.operation.name"] == "invoke_workflow"
    assert root.attributes["moa.request_id"] == "trace-test-1"  # the x-request-id of its log lines
    clients = {s.span_id: s for s in spans if s.kind == "SPAN_KIND_CLIENT"}
    assert sorted(s.name for s in clients.values()) == ["chat agg", "chat p1", "chat p2", "chat q1"]
    by_id = {s.span_id: s for s in spans}
    assert {by_id[s.parent_span_id].name for s in clients.values()} == {"layer 1", "layer 2", "aggregate"}
    assert len(upstream_thread.requests) == 4
    for request in upstream_thread.requests:
        _, trace_id, parent_id, _ = request.headers["traceparent"].split("-")
        assert trace_id == CLIENT_TRACE
        assert clients[parent_id].name == f"chat {request.model}"  # the upstream's spans nest under the call's
        assert request.headers["tracestate"] == "vendor=1"


def test_a_stream_without_traceparent_is_a_trace_of_its_own(
    tmp_path: Path, upstream_thread: ScriptedServer, receiver: OTLPReceiver
) -> None:
    upstream_thread.script("agg", faults=["500"])  # the aggregator's first attempt fails, its retry answers
    cfg = ensemble(upstream_thread.base_url, "streamed", [["p1"]], "agg", backend={"retry": {"max_retries": 1}})
    with moa_serve(tmp_path, [cfg], env=_env(receiver)) as server:
        stream = server.client().chat.completions.create(model="streamed", messages=USER, stream=True)
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert text == "agg answer 0"
        [root] = _workflow(receiver, "invoke_workflow streamed", 1)
        spans = _in_trace(receiver, root.trace_id, 5)
    assert root.parent_span_id == ""  # no client span: the root of its own trace
    [agg] = [s for s in spans if s.name == "chat agg"]
    assert [e["name"] for e in agg.events] == ["moa.retry"]
    assert agg.attributes["moa.retries"] == 1 and agg.status_code == "STATUS_CODE_UNSET"
    assert {r.headers["traceparent"].split("-")[1] for r in upstream_thread.requests} == {root.trace_id}


def test_a_responses_request_joins_the_clients_trace_too(
    tmp_path: Path, upstream_thread: ScriptedServer, receiver: OTLPReceiver
) -> None:
    trace_id, span_id = "0af7651916cd43dd8448eb211c80319c", "b7ad6b7169203331"
    cfg = ensemble(upstream_thread.base_url, "responded", [["p1"]], "agg")
    with moa_serve(tmp_path, [cfg], env=_env(receiver)) as server:
        stream = server.client().responses.create(
            model="responded",
            input="What is 2 + 2?",
            stream=True,
            store=False,
            extra_headers={"traceparent": f"00-{trace_id}-{span_id}-01"},
        )
        text = "".join(e.delta for e in stream if e.type == "response.output_text.delta")
        assert text == "agg answer 0"
        spans = _in_trace(receiver, trace_id, 5)  # workflow, layer 1, aggregate, 2 calls
    [root] = [s for s in spans if s.name == "invoke_workflow responded"]
    assert root.parent_span_id == span_id
    assert {r.headers["traceparent"].split("-")[1] for r in upstream_thread.requests} == {trace_id}
