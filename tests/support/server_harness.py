"""``moa serve`` as a real subprocess on 127.0.0.1 for the server tests, plus small HTTP helpers."""

from __future__ import annotations

import http.client
import json
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import openai
import yaml
from prometheus_client.parser import text_string_to_metric_families

from tests.support.ensembles import moa_config


class ServeProcess:
    """A running ``moa serve``: its base URL and everything it printed so far."""

    def __init__(self, proc: subprocess.Popen[str], stderr_path: Path, start_timeout: float = 30) -> None:
        self.proc = proc
        self.lines: list[str] = []
        self._stderr_path = stderr_path
        self._queue: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()
        listening = self.wait_for("moa serve: listening on ", timeout=start_timeout)
        self.base_url = listening.removeprefix("moa serve: listening on ").strip()
        split = urlsplit(self.base_url)
        self.host, self.port = split.hostname or "127.0.0.1", split.port or 80

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def wait_for(self, prefix: str, timeout: float = 10) -> str:
        """The next printed line starting with ``prefix`` (earlier lines are kept in ``lines``)."""
        until = time.monotonic() + timeout
        while (left := until - time.monotonic()) > 0:
            try:
                line = self._queue.get(timeout=left)
            except queue.Empty:
                break
            if line is None:
                raise AssertionError(f"moa serve exited ({self.proc.wait()}); stderr:\n{self.stderr}")
            self.lines.append(line)
            if line.startswith(prefix):
                return line
        raise AssertionError(f"no line {prefix!r} within {timeout} s; printed: {self.lines}\nstderr:\n{self.stderr}")

    @property
    def stderr(self) -> str:
        return self._stderr_path.read_text(errors="replace")

    @property
    def output(self) -> str:
        """Everything printed, stdout and stderr (call after the process ended for the full text)."""
        while True:
            try:
                line = self._queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                self.lines.append(line)
        return "\n".join(self.lines) + "\n" + self.stderr

    def stop(self, timeout: float = 30) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise

    # ---- clients ----------------------------------------------------------------------------------------

    def client(self, api_key: str = "unused", **kwargs: Any) -> openai.OpenAI:
        """The official client on this server, retries off unless asked (tests see every status as it is)."""
        return openai.OpenAI(base_url=self.base_url, api_key=api_key, **{"max_retries": 0, **kwargs})

    def aclient(self, api_key: str = "unused", **kwargs: Any) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(base_url=self.base_url, api_key=api_key, **{"max_retries": 0, **kwargs})

    # ---- raw HTTP, for what the openai client cannot send --------------------------------------------

    def request(
        self, method: str, path: str, body: bytes | None = None, headers: dict[str, str] | None = None
    ) -> tuple[int, dict[str, str], bytes]:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers or {})
            resp = conn.getresponse()
            return resp.status, {k.lower(): v for k, v in resp.getheaders()}, resp.read()
        finally:
            conn.close()

    def post_json(self, body: Any, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], bytes]:
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.request(
            "POST", "/v1/chat/completions", raw, {"Content-Type": "application/json", **(headers or {})}
        )


def config_args(directory: Path, configs: list[dict[str, Any] | str]) -> list[str]:
    """``-c`` arguments: mappings are written to YAML files in ``directory``; strings (recipe names) pass as is."""
    args = []
    for cfg in configs:
        if isinstance(cfg, dict):
            path = directory / f"{cfg['name']}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            cfg = str(path)
        args += ["-c", cfg]
    return args


@contextmanager
def moa_serve(
    directory: Path,
    configs: list[dict[str, Any] | str],
    *args: str,
    env: dict[str, str] | None = None,
    start_timeout: float = 30,
) -> Iterator[ServeProcess]:
    """Start ``moa serve`` on a free port with these configs; stop it (SIGTERM) when the block ends.

    ``start_timeout`` bounds the wait for it to listen (local engines start before it does)."""
    command = [sys.executable, "-m", "moa.cli", "serve", "--port", "0", *args, *config_args(directory, configs)]
    stderr_path = directory / f"serve-{time.monotonic_ns()}.stderr"
    with open(stderr_path, "w") as stderr:
        proc = subprocess.Popen(
            command, stdout=subprocess.PIPE, stderr=stderr, text=True, env={**os.environ, **(env or {})},
            cwd=Path(__file__).resolve().parents[2],
        )  # fmt: skip
    server = None
    try:
        server = ServeProcess(proc, stderr_path, start_timeout)
        yield server
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if server is not None:
            assert "Traceback" not in server.stderr, server.stderr


def ensemble(base_url: str, name: str, layers: list[list[str]], aggregator: str, **extra: Any) -> dict[str, Any]:
    """A config named ``name`` over the scripted upstream at ``base_url``; its model names should be its own."""
    return {**moa_config(base_url, layers, aggregator, **extra), "name": name}


def wait_until(condition: Callable[[], bool], timeout: float = 10, what: str = "condition") -> None:
    until = time.monotonic() + timeout
    while time.monotonic() < until:
        if condition():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def metric_samples(text: str) -> dict[str, float]:
    """The samples of a /metrics body, read with prometheus_client's parser, keyed ``name{k="v",...}`` (labels
    sorted); a float each, whatever the exposition's number format."""
    found: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            labels = ",".join(f'{k}="{v}"' for k, v in sorted(sample.labels.items()))
            found[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return found
