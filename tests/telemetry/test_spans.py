"""moa's OpenTelemetry spans, read from the SDK's in-memory exporter: one span a request, one a layer and the
aggregation, a CLIENT span a call with the GenAI attributes and moa's; retries and hedges as events, failures with
their error class, no secret anywhere, content only when asked; every upstream request carries its call's
``traceparent`` (the scripted upstream records the headers it got)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF
from opentelemetry.trace import SpanKind, StatusCode

from moa import Ensemble, telemetry
from moa.ensemble import build_request
from moa.telemetry.genai import server
from tests.support.deception_world import always, ask_capital, script_world, world_config
from tests.support.ensembles import moa_config, stream_text_and_trace
from tests.support.scripted_server import ScriptedServer

USER = [{"role": "user", "content": "What is 2 + 2?"}]
KEY, HEADER_SECRET = "sk-test-key-5f0c2e9a71", "hdr-secret-8d1b44a0c3"


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    telemetry.configure(provider)
    yield exporter
    telemetry.configure(None)
    provider.shutdown()


def _by_name(finished: tuple[ReadableSpan, ...]) -> dict[str, list[ReadableSpan]]:
    named: dict[str, list[ReadableSpan]] = {}
    for span in finished:
        named.setdefault(span.name, []).append(span)
    return named


def _parent_name(span: ReadableSpan, finished: tuple[ReadableSpan, ...]) -> str | None:
    if span.parent is None:
        return None
    return next(s.name for s in finished if s.context.span_id == span.parent.span_id)


def _three_layers(base_url: str, **extra: Any) -> dict[str, Any]:
    return moa_config(base_url, [["p1", "p2"], ["q1", "q2"], ["r1"]], "agg", **extra)


async def test_a_request_is_a_tree_of_workflow_layers_and_calls(
    upstream: ScriptedServer, spans: InMemorySpanExporter
) -> None:
    cfg = _three_layers(upstream.base_url)
    cfg["layers"][0]["agents"][0].update(temperature=0.7, top_p=0.9, max_tokens=32, seed=7)
    async with Ensemble.from_config(cfg) as ens:
        result = await ens.acomplete(USER)
    finished = spans.get_finished_spans()
    named = _by_name(finished)
    assert sorted(named) == sorted(
        ["invoke_workflow test", "layer 1", "layer 2", "layer 3", "aggregate"]
        + ["chat p1", "chat p2", "chat q1", "chat q2", "chat r1", "chat agg"]
    )
    assert all(len(v) == 1 for v in named.values())
    [root] = named["invoke_workflow test"]
    assert root.parent is None and root.kind == SpanKind.INTERNAL
    assert {s.context.trace_id for s in finished} == {root.context.trace_id}
    parents = {s.name: _parent_name(s, finished) for s in finished}
    assert parents == {
        "invoke_workflow test": None,
        "layer 1": "invoke_workflow test",
        "layer 2": "invoke_workflow test",
        "layer 3": "invoke_workflow test",
        "aggregate": "invoke_workflow test",
        "chat p1": "layer 1",
        "chat p2": "layer 1",
        "chat q1": "layer 2",
        "chat q2": "layer 2",
        "chat r1": "layer 3",
        "chat agg": "aggregate",
    }
    assert root.attributes is not None
    assert root.attributes["gen_ai.operation.name"] == "invoke_workflow"
    assert root.attributes["gen_ai.workflow.name"] == "test"
    assert root.attributes["moa.calls"] == 6
    assert root.attributes["gen_ai.usage.input_tokens"] == result.usage.prompt_tokens
    assert root.attributes["gen_ai.usage.output_tokens"] == result.usage.completion_tokens
    [p1] = named["chat p1"]
    assert p1.kind == SpanKind.CLIENT
    assert p1.status.status_code == StatusCode.UNSET
    record = next(r for r in result.trace if r.agent == "p1")
    assert dict(p1.attributes or {}) == {
        "gen_ai.operation.name": "chat",
        "gen_ai.provider.name": "openai",
        "gen_ai.request.model": "p1",
        "gen_ai.response.model": "p1",
        "gen_ai.response.id": "x",
        "gen_ai.request.temperature": 0.7,
        "gen_ai.request.top_p": 0.9,
        "gen_ai.request.max_tokens": 32,
        "gen_ai.request.seed": 7,
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": record.prompt_tokens,
        "gen_ai.usage.output_tokens": record.completion_tokens,
        "server.address": "127.0.0.1",
        "server.port": upstream.port,
        "moa.layer": 1,
        "moa.role": "proposer",
        "moa.agent": "p1",
        "moa.outcome": "ok",
        "moa.hedge": False,
        "moa.cached_tokens": 0,
        "moa.retries": 0,
        "moa.backend": "up",
    }
    [agg] = named["chat agg"]
    assert agg.attributes is not None
    assert (agg.attributes["moa.layer"], agg.attributes["moa.role"]) == (4, "aggregator")
    assert "gen_ai.request.stop_sequences" in agg.attributes  # the reference fences, sent beside any stop
    for span in finished:  # content is not captured unless asked
        assert not any(k in (span.attributes or {}) for k in ("gen_ai.input.messages", "gen_ai.output.messages"))


async def test_every_upstream_request_carries_its_calls_traceparent(
    upstream: ScriptedServer, spans: InMemorySpanExporter
) -> None:
    async with Ensemble.from_config(_three_layers(upstream.base_url)) as ens:
        await ens.acomplete(USER)
        await stream_text_and_trace(ens, USER)
    clients = {s.context.span_id: s for s in spans.get_finished_spans() if s.kind == SpanKind.CLIENT}
    assert len(upstream.requests) == 12 and len(clients) == 12
    seen = set()
    for request in upstream.requests:
        version, trace_id, span_id, flags = request.headers["traceparent"].split("-")
        span = clients[int(span_id, 16)]
        assert (version, int(trace_id, 16)) == ("00", span.context.trace_id)
        assert int(flags, 16) & 1  # sampled
        assert span.name == f"chat {request.model}"
        seen.add(span.context.span_id)
    assert len(seen) == 12  # one span each, no request without one


async def test_a_stream_is_the_same_tree_ending_with_the_stream(
    upstream: ScriptedServer, spans: InMemorySpanExporter
) -> None:
    upstream.script("agg", answer="four is the answer")
    async with Ensemble.from_config(_three_layers(upstream.base_url)) as ens:
        text, trace_records = await stream_text_and_trace(ens, USER)
    assert text == "four is the answer"
    finished = spans.get_finished_spans()
    named = _by_name(finished)
    [root], [agg] = named["invoke_workflow test"], named["chat agg"]
    assert _parent_name(agg, finished) == "aggregate"
    assert agg.attributes is not None and agg.attributes["gen_ai.response.finish_reasons"] == ("stop",)
    assert agg.attributes["gen_ai.usage.output_tokens"] == 4
    assert root.attributes is not None and root.attributes["moa.calls"] == len(trace_records) == 6
    assert root.end_time is not None and agg.end_time is not None and root.end_time >= agg.end_time


async def test_a_retried_call_has_retry_events_and_a_failed_one_its_error_class(
    upstream: ScriptedServer, spans: InMemorySpanExporter
) -> None:
    upstream.script("p1", faults=["500", "500", "500"])  # fails each of its attempts
    upstream.script("p2", faults=["429:0.01"])  # answers on its retry
    cfg = moa_config(upstream.base_url, [["p1", "p2"]], "agg", backend={"retry": {"max_retries": 2}})
    async with Ensemble.from_config(cfg) as ens:
        await ens.acomplete(USER)
    named = _by_name(spans.get_finished_spans())
    [p1], [p2] = named["chat p1"], named["chat p2"]
    assert p1.status.status_code == StatusCode.ERROR
    assert p1.status.description == "up: HTTP 500: scripted 500"
    assert p1.attributes is not None
    assert (p1.attributes["error.type"], p1.attributes["http.response.status_code"]) == ("ServerError", 500)
    assert (p1.attributes["moa.outcome"], p1.attributes["moa.retries"]) == ("error", 2)
    assert [e.name for e in p1.events] == ["moa.retry", "moa.retry"]
    first = dict(p1.events[0].attributes or {})
    assert (first["moa.retry"], first["error.type"], first["http.response.status_code"]) == (1, "ServerError", 500)
    assert p2.status.status_code == StatusCode.UNSET
    assert p2.attributes is not None and p2.attributes["moa.outcome"] == "ok"
    [retry] = p2.events
    assert dict(retry.attributes or {})["error.type"] == "RateLimitError"
    assert dict(retry.attributes or {})["moa.delay_s"] == pytest.approx(0.01)
    [layer] = named["layer 1"]
    assert layer.status.status_code == StatusCode.UNSET  # the layer went on with p2


async def test_a_failed_request_marks_its_span_with_the_error_class(
    upstream: ScriptedServer, spans: InMemorySpanExporter
) -> None:
    upstream.script("p1", faults=["400"])
    cfg = moa_config(upstream.base_url, [["p1"]], "agg")
    async with Ensemble.from_config(cfg) as ens:
        with pytest.raises(Exception) as raised:
            await ens.acomplete(USER)
    named = _by_name(spans.get_finished_spans())
    for name in ("invoke_workflow test", "layer 1"):
        [span] = named[name]
        assert span.status.status_code == StatusCode.ERROR
        assert span.attributes is not None and span.attributes["error.type"] == type(raised.value).__name__
    [p1] = named["chat p1"]
    assert p1.attributes is not None and p1.attributes["error.type"] == "BadRequestError"
    assert "aggregate" not in named


async def test_a_hedged_call_is_two_client_spans_and_a_hedge_event(
    upstream: ScriptedServer, spans: InMemorySpanExporter
) -> None:
    upstream.script("agg", answer="hedged final", faults=["hang"])  # the first call never answers
    cfg = moa_config(upstream.base_url, [["p1"]], "agg", backend={"hedge": {"after_s": 0.2, "max_extra": 1.0}})
    async with Ensemble.from_config(cfg) as ens:
        result = await asyncio.wait_for(ens.acomplete(USER), timeout=5)
    assert result.text == "hedged final"
    finished = spans.get_finished_spans()
    first, second = sorted(_by_name(finished)["chat agg"], key=lambda s: s.start_time or 0)
    assert first.attributes is not None and second.attributes is not None
    assert (first.attributes["moa.hedge"], first.attributes["moa.outcome"]) == (False, "cancelled")
    assert first.attributes["moa.reason"] == "hedge lost"
    assert (second.attributes["moa.hedge"], second.attributes["moa.outcome"]) == (True, "ok")
    assert first.status.status_code == second.status.status_code == StatusCode.UNSET
    [hedge] = first.events
    assert hedge.name == "moa.hedge" and dict(hedge.attributes or {})["moa.delay_s"] >= 0.2
    assert _parent_name(first, finished) == _parent_name(second, finished) == "aggregate"


async def test_no_secret_reaches_a_span(
    upstream: ScriptedServer, spans: InMemorySpanExporter, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TRACE_TEST_KEY", KEY)
    upstream.script("p1", faults=["401-echo"])  # its error quotes the Authorization header it got
    upstream.script("p2", answer=f"the key is {KEY}")
    backend = {"api_key_env": "TRACE_TEST_KEY", "headers": {"x-secret": HEADER_SECRET}}
    cfg = moa_config(upstream.base_url, [["p1", "p2"]], "agg")
    cfg["backends"]["up"].update(backend)
    telemetry.configure(telemetry_provider(spans), capture_content=True)
    async with Ensemble.from_config(cfg) as ens:
        await ens.acomplete(USER)
    finished = spans.get_finished_spans()
    [p1] = _by_name(finished)["chat p1"]
    assert p1.status.description is not None and "***" in p1.status.description
    dumped = json.dumps([json.loads(s.to_json()) for s in finished])
    assert HEADER_SECRET not in dumped
    assert KEY not in dumped.replace(f"the key is {KEY}", "")  # only where the model itself wrote it, as content


def test_the_server_address_never_shows_a_urls_password() -> None:
    attributes = server(f"https://user:{HEADER_SECRET}@api.example.com/v1")
    assert attributes == {"server.address": "api.example.com", "server.port": 443}


def telemetry_provider(spans: InMemorySpanExporter) -> TracerProvider:
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    return provider


async def test_message_content_only_when_asked(upstream: ScriptedServer, spans: InMemorySpanExporter) -> None:
    upstream.script("agg", answer="four")
    cfg = moa_config(upstream.base_url, [["p1"]], "agg")
    telemetry.configure(telemetry_provider(spans), capture_content=True)
    async with Ensemble.from_config(cfg) as ens:
        await ens.acomplete(USER)
        await stream_text_and_trace(ens, USER)
    whole, streamed = _by_name(spans.get_finished_spans())["chat agg"]
    for span in (whole, streamed):
        assert span.attributes is not None
        sent = json.loads(str(span.attributes["gen_ai.input.messages"]))
        assert sent[-1]["role"] == "user" and "What is 2 + 2?" in sent[-1]["parts"][0]["content"]
        said = json.loads(str(span.attributes["gen_ai.output.messages"]))
        assert said == [{"role": "assistant", "parts": [{"type": "text", "content": "four"}], "finish_reason": "stop"}]


async def test_the_callers_current_span_is_the_requests_parent(
    upstream: ScriptedServer, spans: InMemorySpanExporter
) -> None:
    provider = telemetry_provider(spans)
    telemetry.configure(provider)
    tracer = provider.get_tracer("the application")
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]], "agg")) as ens:
        with tracer.start_as_current_span("handle question") as outer:
            await ens.acomplete(USER)
    [root] = _by_name(spans.get_finished_spans())["invoke_workflow test"]
    assert root.parent is not None and root.parent.span_id == outer.get_span_context().span_id


async def test_without_a_tracer_provider_nothing_is_traced(upstream: ScriptedServer) -> None:
    assert isinstance(trace.get_tracer_provider(), trace.ProxyTracerProvider)  # no global one in the tests
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]], "agg")) as ens:
        assert ens.context(build_request(USER, {})).span is None
        await ens.acomplete(USER)
    assert len(upstream.requests) == 2
    assert not any("traceparent" in r.headers for r in upstream.requests)


async def test_a_defenses_embedding_calls_are_embeddings_spans_in_their_layer(
    upstream: ScriptedServer, spans: InMemorySpanExporter
) -> None:
    script_world(upstream, always("B"))
    embeddings = {"type": "openai", "base_url": upstream.base_url, "model": "e"}
    await ask_capital(world_config(upstream.base_url, {"type": "cluster-filter", "embeddings": embeddings}))
    finished = spans.get_finished_spans()
    [embed] = _by_name(finished)["embeddings e"]
    assert embed.kind == SpanKind.CLIENT and _parent_name(embed, finished) == "layer 1"
    assert embed.attributes is not None
    assert embed.attributes["gen_ai.operation.name"] == "embeddings"
    assert (embed.attributes["moa.role"], embed.attributes["moa.agent"]) == ("defense", "embedder")
    assert embed.attributes["gen_ai.usage.input_tokens"] > 0
    [request] = upstream.for_model("e")
    assert request.headers["traceparent"].split("-")[2] == f"{embed.context.span_id:016x}"


async def test_a_request_the_sampler_drops_keeps_nothing_but_still_passes_its_trace_on(
    upstream: ScriptedServer, spans: InMemorySpanExporter
) -> None:
    provider = TracerProvider(sampler=ALWAYS_OFF)  # what OTEL_TRACES_SAMPLER=always_off makes
    provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry.configure(provider)
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]], "agg")) as ens:
        await ens.acomplete(USER)
    assert spans.get_finished_spans() == ()
    flags = {r.headers["traceparent"].split("-")[3] for r in upstream.requests}
    assert len(upstream.requests) == 2 and {int(f, 16) & 1 for f in flags} == {0}  # not sampled, said so upstream


async def test_a_stream_closed_early_ends_every_span_as_cancelled(
    upstream: ScriptedServer, spans: InMemorySpanExporter
) -> None:
    upstream.script("agg", answer=" ".join(["word"] * 200), latency_s=2.0)  # 0.2 s between pieces
    async with Ensemble.from_config(moa_config(upstream.base_url, [["p1"]], "agg")) as ens:
        stream = ens.astream(USER)
        first = await asyncio.wait_for(anext(stream), timeout=5)
        assert first.content
        await stream.aclose()
    named = _by_name(spans.get_finished_spans())
    assert sorted(named) == ["aggregate", "chat agg", "chat p1", "invoke_workflow test", "layer 1"]  # all ended
    [root], [aggregate], [agg] = named["invoke_workflow test"], named["aggregate"], named["chat agg"]
    assert agg.attributes is not None and agg.attributes["moa.outcome"] == "cancelled"
    for span in (root, aggregate, agg):
        assert span.status.status_code == StatusCode.UNSET  # a client that left is no error
    assert root.attributes is not None and aggregate.attributes is not None
    assert root.attributes["moa.outcome"] == aggregate.attributes["moa.outcome"] == "cancelled"
