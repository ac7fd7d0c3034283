"""The server's counters, kept and exposed by prometheus_client (as vLLM does).

Request-level figures come from the handler; upstream figures come from the trace records of each request
(one record per model call): calls by outcome (``error`` is a failure), retries and tokens, per backend.

Each server has its own ``CollectorRegistry`` (several servers may share a process, as in the tests). When
``PROMETHEUS_MULTIPROC_DIR`` names a directory (set before the process starts), prometheus_client keeps the
values in files there and ``/metrics`` reports the sum over every process using that directory, so replicas of
``moa serve`` report as one; the in-flight gauge then counts the live processes only.
"""

from __future__ import annotations

import os
from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, multiprocess
from prometheus_client.exposition import choose_encoder

from moa.errors import ConfigError
from moa.types import CallRecord

#: the environment variable of prometheus_client's multiprocess mode (a directory shared by the processes)
MULTIPROC_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"
#: seconds; ensembles run from tens of milliseconds (cached) to minutes (long answers of big models)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300)


def multiproc_dir() -> str | None:
    """The directory of prometheus_client's multiprocess mode, or None when it is off."""
    return os.environ.get(MULTIPROC_DIR_ENV) or None


def check_multiproc_dir() -> None:
    """Refuse a multiprocess directory that is not there (prometheus_client would fail at the first count)."""
    directory = multiproc_dir()
    if directory is not None and not os.path.isdir(directory):
        raise ConfigError("must name an existing directory (prometheus_client's multiprocess mode)", MULTIPROC_DIR_ENV)


class ServerMetrics:
    """Every figure ``/metrics`` reports; one instance per server. Label names are listed in sorted order,
    the order of the exposed samples."""

    def __init__(self) -> None:
        check_multiproc_dir()
        self.registry = CollectorRegistry()
        reg = self.registry
        self.requests = Counter(
            "moa_requests_total",
            "Chat completion requests by ensemble and HTTP status.",
            ("ensemble", "status"),
            registry=reg,
        )
        self.latency = Histogram(
            "moa_request_duration_seconds",
            "Chat completion latency, to the last byte.",
            ("ensemble",),
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.ttft = Histogram(
            "moa_time_to_first_token_seconds",
            "Streamed requests: time to the first token.",
            ("ensemble",),
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.in_flight = Gauge(
            "moa_requests_in_flight",
            "Chat completion requests admitted and not finished.",
            multiprocess_mode="livesum",
            registry=reg,
        )
        self.calls = Counter(
            "moa_upstream_calls_total",
            "Model calls by backend and outcome (ok, error, cancelled, skipped: not made, over the request's budget).",
            ("backend", "ensemble", "outcome"),
            registry=reg,
        )
        self.retries = Counter(
            "moa_upstream_retries_total",
            "Retried attempts of model calls, by backend.",
            ("backend", "ensemble"),
            registry=reg,
        )
        self.tokens = Counter(
            "moa_upstream_tokens_total",
            "Tokens of model calls by backend and kind.",
            ("backend", "ensemble", "kind"),
            registry=reg,
        )
        self.cost = Counter(
            "moa_cost_usd",
            "USD spent on model calls with prices, by backend and model.",
            ("backend", "ensemble", "model"),
            registry=reg,
        )
        self.model_tokens = Counter(
            "moa_tokens",
            "Tokens of model calls by backend, model and kind (prompt, cached: the prompt's from a prefix cache, "
            "completion).",
            ("backend", "ensemble", "kind", "model"),
            registry=reg,
        )
        self.call_latency = Histogram(
            "moa_upstream_call_duration_seconds",
            "Model call latency, retries included.",
            ("backend", "ensemble"),
            buckets=LATENCY_BUCKETS,
            registry=reg,
        )
        self.limits_store = Gauge(
            "moa_limits_store",
            "Backends with a limits store: 1 for the state they are in (shared, local-fallback).",
            ("backend", "ensemble", "state"),
            multiprocess_mode="livemax",
            registry=reg,
        )
        self.in_flight.set(0)

    def record_request(self, ensemble: str, status: int, seconds: float | None) -> None:
        self.requests.labels(ensemble=ensemble, status=str(status)).inc()
        if seconds is not None:
            self.latency.labels(ensemble=ensemble).observe(seconds)

    def record_first_token(self, ensemble: str, seconds: float) -> None:
        self.ttft.labels(ensemble=ensemble).observe(seconds)

    def record_calls(self, ensemble: str, records: Iterable[CallRecord]) -> None:
        for r in records:
            self.calls.labels(backend=r.backend, ensemble=ensemble, outcome=r.outcome).inc()
            if r.outcome == "skipped":  # not made: no tokens, no latency
                continue
            for kind, count in (
                ("prompt", r.prompt_tokens),
                ("cached", r.cached_prompt_tokens),
                ("completion", r.completion_tokens),
            ):
                if count:
                    self.model_tokens.labels(backend=r.backend, ensemble=ensemble, kind=kind, model=r.model).inc(count)
            if r.cost_usd:
                self.cost.labels(backend=r.backend, ensemble=ensemble, model=r.model).inc(r.cost_usd)
            if r.retries:
                self.retries.labels(backend=r.backend, ensemble=ensemble).inc(r.retries)
            if r.prompt_tokens:
                self.tokens.labels(backend=r.backend, ensemble=ensemble, kind="prompt").inc(r.prompt_tokens)
            if r.completion_tokens:
                self.tokens.labels(backend=r.backend, ensemble=ensemble, kind="completion").inc(r.completion_tokens)
            self.call_latency.labels(backend=r.backend, ensemble=ensemble).observe(r.latency_s)

    def record_limits_state(self, ensemble: str, backend: str, state: str, value: float) -> None:
        self.limits_store.labels(backend=backend, ensemble=ensemble, state=state).set(value)

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (body, content type) for a scrape whose Accept header is ``accept``: Prometheus text
        0.0.4 unless OpenMetrics is asked for. In multiprocess mode, the sum over every process's files."""
        encode, content_type = choose_encoder(accept)
        directory = multiproc_dir()
        if directory is None:
            return encode(self.registry), content_type
        gathered = CollectorRegistry()
        multiprocess.MultiProcessCollector(gathered, path=directory)
        return encode(gathered), content_type

    def close(self) -> None:
        """In multiprocess mode, drop this process's live gauges (its in-flight count) from the sum."""
        directory = multiproc_dir()
        if directory is not None:
            multiprocess.mark_process_dead(os.getpid(), directory)


__all__ = ["LATENCY_BUCKETS", "MULTIPROC_DIR_ENV", "ServerMetrics", "check_multiproc_dir", "multiproc_dir"]
