"""A small real OTLP/HTTP trace receiver on 127.0.0.1: ``POST /v1/traces`` takes an ``ExportTraceServiceRequest``
(protobuf, as OpenTelemetry's HTTP exporter sends it; gzip or not), decoded with ``opentelemetry-proto``, and keeps
its spans; ``GET /spans`` returns them as JSON. For tests (``OTLPReceiver``, in the test's loop or a thread of its
own) and benchmarks (``python -m tests.support.otlp_receiver`` prints ``listening on http://127.0.0.1:PORT``)."""

from __future__ import annotations

import argparse
import asyncio
import gzip
import zlib
from dataclasses import asdict, dataclass, field
from typing import Any

from aiohttp import web
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span, Status

PROTOBUF = "application/x-protobuf"


@dataclass
class ReceivedSpan:
    """One exported span, its ids in hex as W3C ``traceparent`` writes them."""

    name: str
    trace_id: str
    span_id: str
    parent_span_id: str
    kind: str  # SPAN_KIND_CLIENT, SPAN_KIND_INTERNAL, ...
    attributes: dict[str, Any]
    events: list[dict[str, Any]]
    status_code: str  # STATUS_CODE_UNSET, STATUS_CODE_OK, STATUS_CODE_ERROR
    status_message: str
    resource: dict[str, Any] = field(default_factory=dict)
    start_ns: int = 0
    end_ns: int = 0


def _value(value: AnyValue) -> Any:
    which = value.WhichOneof("value")
    if which == "array_value":
        return [_value(v) for v in value.array_value.values]
    if which == "kvlist_value":
        return _attributes(value.kvlist_value.values)
    if which is None:
        return None
    return getattr(value, which)


def _attributes(pairs: Any) -> dict[str, Any]:
    return {kv.key: _value(kv.value) for kv in pairs if isinstance(kv, KeyValue)}


def decode(body: bytes) -> list[ReceivedSpan]:
    """The spans of one export request."""
    request = ExportTraceServiceRequest()
    request.ParseFromString(body)
    spans = []
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for span in scope_spans.spans:
                spans.append(
                    ReceivedSpan(
                        name=span.name,
                        trace_id=span.trace_id.hex(),
                        span_id=span.span_id.hex(),
                        parent_span_id=span.parent_span_id.hex(),
                        kind=Span.SpanKind.Name(span.kind),
                        attributes=_attributes(span.attributes),
                        events=[{"name": e.name, "attributes": _attributes(e.attributes)} for e in span.events],
                        status_code=Status.StatusCode.Name(span.status.code),
                        status_message=span.status.message,
                        resource=resource,
                        start_ns=span.start_time_unix_nano,
                        end_ns=span.end_time_unix_nano,
                    )
                )
    return spans


class OTLPReceiver:
    """The receiver's state and its aiohttp app; ``start`` binds a free port."""

    def __init__(self) -> None:
        self.spans: list[ReceivedSpan] = []
        self.exports = 0
        self.port = 0
        self._runner: web.AppRunner | None = None

    @property
    def endpoint(self) -> str:
        """``OTEL_EXPORTER_OTLP_ENDPOINT`` for an exporter sending here (it appends ``/v1/traces``)."""
        return f"http://127.0.0.1:{self.port}"

    async def _traces(self, request: web.Request) -> web.Response:
        body = await request.read()
        coding = request.headers.get("Content-Encoding", "")
        if coding == "gzip":
            body = gzip.decompress(body)
        elif coding == "deflate":
            body = zlib.decompress(body)
        if request.content_type != PROTOBUF:
            return web.Response(status=415, text=f"expected {PROTOBUF}")
        self.spans.extend(decode(body))
        self.exports += 1
        return web.Response(body=ExportTraceServiceResponse().SerializeToString(), content_type=PROTOBUF)

    async def _spans(self, request: web.Request) -> web.Response:
        return web.json_response([asdict(s) for s in self.spans])

    async def start(self, port: int = 0) -> None:
        app = web.Application(client_max_size=64 * 2**20)
        app.router.add_post("/v1/traces", self._traces)
        app.router.add_get("/spans", self._spans)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", port)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    def named(self, name: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name == name]


async def _main(port: int) -> None:
    receiver = OTLPReceiver()
    await receiver.start(port)
    print(f"listening on {receiver.endpoint}", flush=True)
    await asyncio.Event().wait()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    asyncio.run(_main(parser.parse_args().port))
