"""moa imports and runs without OpenTelemetry (the ``moa[otel]`` extra not installed), even where the environment
asks for traces: a subprocess in which ``opentelemetry`` cannot be imported answers a request, makes no span and
sends no ``traceparent``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.support.ensembles import moa_config
from tests.support.scripted_server import ScriptedServer

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = """
import asyncio, json, sys
sys.modules["opentelemetry"] = None  # as if the extra were not installed: every import of it fails

from moa import Ensemble, telemetry
from moa.ensemble import build_request

USER = [{"role": "user", "content": "hi"}]


async def main() -> None:
    async with Ensemble.from_config(json.loads(sys.argv[1])) as ens:
        result = await ens.acomplete(USER)
        span = ens.context(build_request(USER, {})).span
    try:
        telemetry.configure(None)
    except ImportError as e:
        refused = str(e)
    print(json.dumps({"text": result.text, "span": repr(span), "refused": refused}))


asyncio.run(main())
"""


def test_moa_runs_without_opentelemetry_even_when_asked_for_traces(
    upstream_thread: ScriptedServer, tmp_path: Path
) -> None:
    cfg = moa_config(upstream_thread.base_url, [["p1"]], "agg")
    env = {**os.environ, "OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:9", "PYTHONPATH": str(ROOT)}
    done = subprocess.run(
        [sys.executable, "-c", SCRIPT, json.dumps(cfg)], capture_output=True, text=True, env=env, timeout=60, cwd=ROOT
    )
    assert done.returncode == 0, done.stderr
    out = json.loads(done.stdout.strip().splitlines()[-1])
    assert out == {"text": "agg answer 0", "span": "None", "refused": out["refused"]}
    assert "pip install 'moa[otel]'" in out["refused"]
    assert len(upstream_thread.requests) == 2
    assert not any("traceparent" in r.headers for r in upstream_thread.requests)
