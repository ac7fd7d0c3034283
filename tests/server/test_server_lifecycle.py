"""A client that goes away cancels its upstream calls; SIGTERM lets running requests finish, then exits."""

from __future__ import annotations

import asyncio
import json
import signal
import threading
from collections.abc import Iterator

import openai
import pytest

from tests.support.scripted_server import ScriptedServer
from tests.support.server_harness import ServeProcess, ensemble, metric_samples, moa_serve, wait_until

USER = [{"role": "user", "content": "Tell me a long story."}]


@pytest.fixture
def serve(upstream_sync_url: str, upstream_thread: ScriptedServer, tmp_path) -> Iterator[ServeProcess]:
    cfg = ensemble(
        upstream_sync_url, "life", [["l1", "l2", "l3"]], "lagg", backend={"retry": {"initial_backoff_s": 0.01}}
    )
    with moa_serve(tmp_path, [cfg]) as server:
        yield server


def _outcomes(upstream_thread: ScriptedServer, *models: str) -> list[str]:
    return [r.outcome for m in models for r in upstream_thread.for_model(m)]


async def test_client_timeout_cancels_every_proposer_call(serve: ServeProcess, upstream_thread: ScriptedServer) -> None:
    for m in ("l1", "l2", "l3"):
        upstream_thread.script(m, latency_s=5)
    async with serve.aclient(timeout=0.5) as client:
        with pytest.raises(openai.APITimeoutError):
            await client.chat.completions.create(model="life", messages=USER)
    await asyncio.to_thread(
        wait_until,
        lambda: _outcomes(upstream_thread, "l1", "l2", "l3") == ["cancelled"] * 3,
        3,
        "the proposers to be cancelled",
    )
    assert upstream_thread.for_model("lagg") == []


async def test_closing_a_stream_cancels_the_aggregator_call(
    serve: ServeProcess, upstream_thread: ScriptedServer
) -> None:
    upstream_thread.script(
        "lagg", answer=" ".join(f"w{i}" for i in range(200)), latency_s=1.0
    )  # 0.1 s a word after the first
    async with serve.aclient() as client:
        stream = await client.chat.completions.create(model="life", messages=USER, stream=True)
        async for chunk in stream:
            if chunk.choices and chunk.choices[0].delta.content:
                break
        await stream.close()
    await asyncio.to_thread(
        wait_until, lambda: _outcomes(upstream_thread, "lagg") == ["cancelled"], 3, "the aggregator cancelled"
    )
    assert _outcomes(upstream_thread, "l1", "l2", "l3") == ["ok"] * 3
    status, _, body = serve.request("GET", "/metrics")
    assert (
        metric_samples(body.decode())['moa_requests_total{ensemble="life",status="499"}'] == 1
    )  # nginx's "client closed"


def test_sigterm_drains_running_requests_then_exits(serve: ServeProcess, upstream_thread: ScriptedServer) -> None:
    upstream_thread.script("lagg", answer="finished despite the signal", latency_s=1.5)
    upstream_thread.script("l1", answer="slow proposal")
    results: dict[str, object] = {}

    def call(stream: bool) -> None:
        with serve.client() as client:
            if stream:
                chunks = client.chat.completions.create(model="life", messages=USER, stream=True)
                results["stream"] = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
            else:
                results["whole"] = (
                    client.chat.completions.create(model="life", messages=USER).choices[0].message.content
                )

    callers = [threading.Thread(target=call, args=(s,)) for s in (False, True)]
    for t in callers:
        t.start()
    wait_until(lambda: len(upstream_thread.for_model("lagg")) == 2, 5, "both requests at the aggregator")
    serve.proc.send_signal(signal.SIGTERM)
    assert serve.wait_for("moa serve: draining") == "moa serve: draining 2 in-flight request(s)"
    with pytest.raises(ConnectionRefusedError):  # no longer listening while the two finish
        serve.request("GET", "/health")
    for t in callers:
        t.join(timeout=10)
    assert results == {"whole": "finished despite the signal", "stream": "finished despite the signal"}
    assert serve.proc.wait(timeout=10) == 0
    serve.wait_for("moa serve: stopped")
    assert _outcomes(upstream_thread, "lagg") == ["ok", "ok"]


def test_metrics_count_requests_and_upstream_failures_per_backend(
    serve: ServeProcess, upstream_thread: ScriptedServer
) -> None:
    upstream_thread.script("l1", faults=["400"])
    upstream_thread.script("l2", faults=["500", "500", "500"])  # retried twice (the default), then given up
    with serve.client() as client:
        client.chat.completions.create(model="life", messages=USER)
        upstream_thread.script("l3", faults=["400"])
        upstream_thread.script("l1", faults=["400"])
        upstream_thread.script("l2", faults=["400"])
        with pytest.raises(openai.InternalServerError):
            client.chat.completions.create(model="life", messages=USER)
    status, headers, body = serve.request("GET", "/metrics")
    assert status == 200 and headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = metric_samples(body.decode())
    on = 'backend="up",ensemble="life"'
    assert samples['moa_requests_total{ensemble="life",status="200"}'] == 1
    assert samples['moa_requests_total{ensemble="life",status="503"}'] == 1
    assert samples[f'moa_upstream_calls_total{{{on},outcome="error"}}'] == 5  # 2 in the first, 3 in the second
    assert samples[f'moa_upstream_calls_total{{{on},outcome="ok"}}'] == 2  # l3 and the aggregator
    assert samples[f"moa_upstream_retries_total{{{on}}}"] == 2
    assert samples['moa_request_duration_seconds_count{ensemble="life"}'] == 2
    assert samples["moa_requests_in_flight"] == 0
    assert json.loads(serve.request("GET", "/health")[2])["status"] == "ok"
