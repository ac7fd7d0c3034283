"""Clients that leave mid-stream and servers that stop with requests still open: every end is a clean one.

A client that goes away is a 499 in the metrics and one quiet log line, never a 500 or a traceback, and its
calls are cancelled. At ``--drain-timeout`` a stream still open gets an error event (``shutting_down``) and
``data: [DONE]``, a whole request a 503 with the OpenAI error body; only then does the server close.
"""

from __future__ import annotations

import json
import signal
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from tests.support.scripted_server import ScriptedServer
from tests.support.server_harness import ServeProcess, ensemble, metric_samples, moa_serve, wait_until

USER = [{"role": "user", "content": "Tell me a long story."}]
LONG = " ".join(f"w{i}" for i in range(400))


def stream_request(model: str, progress: bool) -> bytes:
    options = {"include_usage": True, **({"include_progress": True} if progress else {})}
    body = json.dumps({"model": model, "messages": USER, "stream": True, "stream_options": options}).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: moa\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def read_until(sock: socket.socket, marker: bytes, timeout: float = 10) -> bytes:
    """What the server sent until ``marker`` appeared in it (or it closed)."""
    sock.settimeout(timeout)
    data = b""
    while marker not in data:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    return data


def read_all(sock: socket.socket, timeout: float = 15) -> bytes:
    sock.settimeout(timeout)
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def samples(server: ServeProcess) -> dict[str, float]:
    return metric_samples(server.request("GET", "/metrics")[2].decode())


# ---- clients that leave ------------------------------------------------------------------------------


@pytest.fixture
def streaming(upstream_sync_url: str, upstream_thread: ScriptedServer, tmp_path) -> Iterator[ServeProcess]:
    upstream_thread.script("sagg", answer=LONG, latency_s=0.02)  # a token every 2 ms: writes race the close
    cfg = ensemble(upstream_sync_url, "s", [["s1"]], "sagg")
    with moa_serve(tmp_path, [cfg]) as server:
        yield server


def test_clients_that_leave_mid_stream_are_499_without_a_traceback(
    streaming: ServeProcess, upstream_thread: ScriptedServer
) -> None:
    # a quarter each: closed (FIN) or reset (RST), with or without progress events; tokens 2 ms apart make the
    # server's next write race the close (before the fix, a few of 48 were 500s with two tracebacks each)
    clients = 48
    errors: list[BaseException] = []

    def leave(i: int) -> None:
        try:
            sock = socket.create_connection((streaming.host, streaming.port), timeout=10)
            sock.sendall(stream_request("s", progress=i % 2 == 1))
            read_until(sock, b'"content": "w')  # the first token of the answer
            if i % 4 >= 2:  # RST instead of FIN
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
            sock.close()
        except BaseException as e:  # noqa: BLE001 - reported by the test
            errors.append(e)

    threads = [threading.Thread(target=leave, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert errors == []
    key = 'moa_requests_total{ensemble="s",status="499"}'
    wait_until(lambda: samples(streaming).get(key) == clients, 10, f"{clients} requests counted as 499")
    found = samples(streaming)
    assert not [k for k in found if k.startswith("moa_requests_total{") and 'status="499"' not in k], found
    wait_until(
        lambda: [r.outcome for r in upstream_thread.for_model("sagg")] == ["cancelled"] * clients,
        10,
        "every aggregator call cancelled",
    )
    assert found["moa_requests_in_flight"] == 0
    log = streaming.stderr
    assert "Traceback" not in log and " ERROR " not in log, log


# ---- servers that stop -------------------------------------------------------------------------------


def whole_request(model: str) -> bytes:
    body = json.dumps({"model": model, "messages": USER}).encode()
    head = (
        "POST /v1/chat/completions HTTP/1.1\r\nHost: moa\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


def parse(data: bytes) -> tuple[int, dict[str, str], bytes]:
    head, _, rest = data.partition(b"\r\n\r\n")
    status_line, *lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return int(status_line.split()[1]), headers, rest


def sse_events(body: bytes) -> list[str]:
    """The ``data:`` payloads of an SSE body, in order (chunked framing dropped)."""
    return [line[6:] for line in body.decode(errors="replace").split("\n") if line.startswith("data: ")]


def test_at_the_drain_timeout_streams_end_with_an_error_event_and_done_and_whole_requests_get_503(
    upstream_sync_url: str, upstream_thread: ScriptedServer, tmp_path
) -> None:
    upstream_thread.script("slowagg", answer=LONG, latency_s=1.0)  # first token at 1 s, then one every 0.1 s
    upstream_thread.script("hangagg", latency_s=30)
    configs = [
        ensemble(upstream_sync_url, "streamed", [["d1"]], "slowagg"),
        ensemble(upstream_sync_url, "held", [["d2"]], "hangagg"),
    ]
    with moa_serve(tmp_path, configs, "--drain-timeout", "2") as server:
        socks = {name: socket.create_connection((server.host, server.port), timeout=15) for name in
                 ("tokens", "progress", "whole", "unstarted")}  # fmt: skip
        socks["tokens"].sendall(stream_request("streamed", progress=False))
        socks["progress"].sendall(stream_request("held", progress=True))  # began, no token yet
        socks["whole"].sendall(whole_request("held"))
        socks["unstarted"].sendall(stream_request("held", progress=False))  # no byte of answer yet
        began = {"tokens": read_until(socks["tokens"], b'"content": "w')}
        began["progress"] = read_until(socks["progress"], b"moa.progress")
        wait_until(lambda: len(upstream_thread.for_model("hangagg")) == 3, 5, "the held requests at the aggregator")
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        got = {name: read_all(sock) for name, sock in socks.items()}
        assert server.proc.wait(timeout=10) == 0
        took = time.monotonic() - started
        for sock in socks.values():
            sock.close()
    assert 1.5 < took < 4, took
    for name in ("tokens", "progress"):
        status, _, body = parse(began[name] + got[name])
        events = sse_events(body)
        assert status == 200 and events[-1] == "[DONE]", (name, events[-3:])
        error = json.loads(events[-2])["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == "shutting_down", error
    for name in ("whole", "unstarted"):
        status, headers, body = parse(got[name])
        assert status == 503 and headers["content-type"].startswith("application/json"), (name, got[name][:300])
        error = json.loads(body[: int(headers["content-length"])])["error"]
        assert error["code"] == "shutting_down" and error["type"] == "server_error", error
    wait_until(
        lambda: all(r.outcome == "cancelled" for m in ("slowagg", "hangagg") for r in upstream_thread.for_model(m)),
        5,
        "the aggregator calls cancelled",
    )
    log = server.output
    assert "Traceback" not in log and " ERROR " not in log, log
