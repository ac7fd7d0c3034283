"""Arize Phoenix (``phoenix serve``) on 127.0.0.1 as a real OTLP/HTTP receiver for the end-to-end tracing test:
started on free ports with a throwaway working directory, its spans read back through its REST API
(``GET /v1/projects/{project}/spans``). Beside vLLM, Phoenix would move packages vLLM's server uses (fastapi), so
``scripts/setup --dev`` installs it into a venv of its own, ``.venv-phoenix/`` (``MOA_PHOENIX`` may name another ``phoenix`` binary)."""

from __future__ import annotations

import json
import os
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from tests.support.redis_server import free_port

ROOT = Path(__file__).resolve().parents[2]
SKIP_REASON = (
    "Arize Phoenix is not installed (scripts/setup --dev puts it in .venv-phoenix/, or set MOA_PHOENIX to a "
    "`phoenix` binary): the end-to-end OTLP test is skipped"
)


def phoenix_binary() -> Path | None:
    """The ``phoenix`` command to run, if there is one."""
    named = os.environ.get("MOA_PHOENIX")
    path = Path(named) if named else ROOT / ".venv-phoenix" / "bin" / "phoenix"
    return path if path.is_file() and os.access(path, os.X_OK) else None


class Phoenix:
    """One ``phoenix serve`` process; ``endpoint`` is what ``OTEL_EXPORTER_OTLP_ENDPOINT`` takes."""

    def __init__(self, directory: Path) -> None:
        binary = phoenix_binary()
        if binary is None:
            pytest.skip(SKIP_REASON)
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 120) -> None:
        env = {
            **os.environ,
            "PHOENIX_HOST": "127.0.0.1",
            "PHOENIX_PORT": str(self.port),
            "PHOENIX_GRPC_PORT": str(free_port()),
            "PHOENIX_WORKING_DIR": str(self.directory),
            "PHOENIX_TELEMETRY_ENABLED": "false",
        }
        with open(self.directory / "phoenix.log", "wb") as log:  # the child keeps its own copy of the descriptor
            self.proc = subprocess.Popen([str(self.binary), "serve"], stdout=log, stderr=subprocess.STDOUT, env=env)
        until = time.monotonic() + timeout
        while time.monotonic() < until:
            if self.proc.poll() is not None:
                raise AssertionError(f"phoenix serve exited with {self.proc.returncode}: {self.log()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.endpoint}/healthz", timeout=2) as answer:
                    if answer.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.2)
        raise AssertionError(f"phoenix serve did not answer within {timeout} s: {self.log()[-2000:]}")

    def log(self) -> str:
        return (self.directory / "phoenix.log").read_text(errors="replace")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def spans(self, project: str, trace_id: str) -> list[dict[str, Any]]:
        """Every span of ``trace_id`` that Phoenix stored under ``project`` (an unknown project has none)."""
        found: list[dict[str, Any]] = []
        cursor: str | None = None
        while True:
            query = {"trace_id": trace_id, "limit": "1000", **({"cursor": cursor} if cursor else {})}
            url = f"{self.endpoint}/v1/projects/{urllib.parse.quote(project)}/spans?{urllib.parse.urlencode(query)}"
            try:
                with urllib.request.urlopen(url, timeout=10) as answer:
                    page = json.load(answer)
            except urllib.error.HTTPError as e:
                if e.code == 404:  # the project exists once its first span is stored
                    return []
                raise
            found += page["data"]
            cursor = page.get("next_cursor")
            if not cursor:
                return found
