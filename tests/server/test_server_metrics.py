"""/metrics through prometheus_client: the names, HELP texts and buckets scrapers know, OpenMetrics when asked,
and replicas sharing PROMETHEUS_MULTIPROC_DIR reporting as one."""

from __future__ import annotations

import math
import os
import subprocess
import sys
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from moa.server.metrics import LATENCY_BUCKETS
from tests.support.scripted_server import ScriptedServer
from tests.support.server_harness import config_args, ensemble, metric_samples, moa_serve

USER = [{"role": "user", "content": "Count me."}]
DONE = 'moa_requests_total{ensemble="m",status="200"}'
CALLS = 'moa_upstream_calls_total{backend="up",ensemble="m",outcome="ok"}'


def _config(base_url: str) -> dict[str, object]:
    return ensemble(base_url, "m", [["m1"]], "magg")


def test_names_help_and_buckets_are_those_scrapers_know(
    upstream_sync_url: str, upstream_thread: ScriptedServer, tmp_path: Path
) -> None:
    with moa_serve(tmp_path, [_config(upstream_sync_url)]) as server:
        with server.client() as client:
            client.chat.completions.create(model="m", messages=USER)
        status, headers, body = server.request("GET", "/metrics")
    assert status == 200 and headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(body.decode())}
    assert families["moa_requests"].type == "counter"
    assert families["moa_requests"].documentation == "Chat completion requests by ensemble and HTTP status."
    assert families["moa_requests_in_flight"].type == "gauge"
    latency = families["moa_upstream_call_duration_seconds"]
    assert latency.type == "histogram" and latency.documentation == "Model call latency, retries included."
    bounds = [float(s.labels["le"]) for s in latency.samples if s.name.endswith("_bucket")]
    assert bounds == [*map(float, LATENCY_BUCKETS), math.inf]
    assert metric_samples(body.decode())[CALLS] == 2  # the proposer and the aggregator


def test_openmetrics_is_served_to_a_scraper_that_asks_for_it(
    upstream_sync_url: str, upstream_thread: ScriptedServer, tmp_path: Path
) -> None:
    accept = "application/openmetrics-text; version=1.0.0,text/plain;version=0.0.4;q=0.5"
    with moa_serve(tmp_path, [_config(upstream_sync_url)]) as server:
        status, headers, body = server.request("GET", "/metrics", headers={"Accept": accept})
    assert status == 200 and headers["content-type"].startswith("application/openmetrics-text; version=1.0.0")
    assert body.decode().endswith("# EOF\n") and "# TYPE moa_requests counter" in body.decode()


def test_replicas_sharing_a_multiproc_dir_report_their_sum(
    upstream_sync_url: str, upstream_thread: ScriptedServer, tmp_path: Path
) -> None:
    shared = tmp_path / "prometheus"
    shared.mkdir()
    env = {"PROMETHEUS_MULTIPROC_DIR": str(shared)}
    cfg = _config(upstream_sync_url)
    with moa_serve(tmp_path, [cfg], env=env) as first:
        with moa_serve(tmp_path, [cfg], env=env) as second:
            for server in (first, second):
                with server.client() as client:
                    client.chat.completions.create(model="m", messages=USER)
            for server in (first, second):
                found = metric_samples(server.request("GET", "/metrics")[2].decode())
                assert found[DONE] == 2 and found[CALLS] == 4 and found["moa_requests_in_flight"] == 0
            second_pid = second.proc.pid
        assert not list(shared.glob(f"gauge_livesum_{second_pid}.db"))  # a replica that stopped leaves the sum
        found = metric_samples(first.request("GET", "/metrics")[2].decode())
        assert found[DONE] == 2 and found["moa_requests_in_flight"] == 0  # its counts stay


def test_a_missing_multiproc_dir_is_refused_before_serving(upstream_sync_url: str, tmp_path: Path) -> None:
    command = [
        sys.executable,
        "-m",
        "moa.cli",
        "serve",
        "--port",
        "0",
        *config_args(tmp_path, [_config(upstream_sync_url)]),
    ]
    env = {**os.environ, "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "nowhere")}
    proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
                            cwd=Path(__file__).resolve().parents[2])  # fmt: skip
    try:
        out, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2 and "Traceback" not in err and "listening" not in out
    assert err.startswith("error: PROMETHEUS_MULTIPROC_DIR: must name an existing directory")
